"""Offscreen RGB-D rendering of a scene camera: one render pass gives color and aligned depth.

mujoco.Renderer renders twice for color + depth; reading both buffers after a single
``mjr_render`` halves the cost, which is what lets 640x480 RGB-D reach camera rates on a CPU.
Depth is metric z along the optical axis (what a D435i reports), so it is aligned to color
by construction.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from failrecov_ros.core.camera import Intrinsics  # noqa: E402


class RgbdCamera:
    """Renders ``camera`` of ``model`` at ``width`` x ``height``; call ``close()`` when done."""

    def __init__(self, model: mujoco.MjModel, camera: str, width: int = 640,
                 height: int = 480) -> None:
        self.model = model
        self.camera_id = model.camera(camera).id
        if width > model.vis.global_.offwidth or height > model.vis.global_.offheight:
            raise ValueError(
                f"{width}x{height} exceeds the offscreen buffer "
                f"{model.vis.global_.offwidth}x{model.vis.global_.offheight}")
        self.width, self.height = width, height
        self.intrinsics = Intrinsics.from_fovy(width, height, float(model.cam_fovy[self.camera_id]))
        self._gl = mujoco.GLContext(width, height)
        self._gl.make_current()
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self._scene = mujoco.MjvScene(model, maxgeom=2000)
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = self.camera_id
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.empty((height, width, 3), np.uint8)
        self._depth = np.empty((height, width), np.float32)
        extent = float(model.stat.extent)
        self.near = float(model.vis.map.znear) * extent
        self.far = float(model.vis.map.zfar) * extent

    def render(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        """Color (HxWx3 uint8, RGB) and depth (HxW float32 metres) of the current state."""
        self.capture(data)
        return self.read()

    def capture(self, data: mujoco.MjData) -> None:
        """Copy the scene geometry out of ``data`` (the only step that must hold the physics)."""
        mujoco.mjv_updateScene(self.model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Render the last captured scene: color and metric depth (NaN where nothing is)."""
        self._gl.make_current()
        mujoco.mjr_render(self._rect, self._scene, self._context)
        mujoco.mjr_readPixels(self._rgb, self._depth, self._rect, self._context)
        return np.flipud(self._rgb).copy(), self._linear_depth(np.flipud(self._depth))

    def _linear_depth(self, buffer: np.ndarray) -> np.ndarray:
        # Reversed-z perspective depth buffer to metric z (the same algebra as mujoco.Renderer).
        znear, zfar = np.float32(self.near), np.float32(self.far)
        c_coef = -(zfar + znear) / (zfar - znear)
        d_coef = -(np.float32(2) * zfar * znear) / (zfar - znear)
        c_coef = np.float32(-0.5) * c_coef - np.float32(0.5)
        d_coef = np.float32(-0.5) * d_coef
        depth = (d_coef / (buffer.astype(np.float64) + c_coef)).astype(np.float32)
        depth[depth >= self.far * 0.999] = np.nan  # nothing rendered there: no depth reading
        return depth

    def close(self) -> None:
        """Free the GL context and renderer buffers (idempotent)."""
        if self._context is not None:
            self._gl.make_current()
            self._context.free()
            self._context = None
            self._gl.free()

    def __enter__(self) -> RgbdCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
