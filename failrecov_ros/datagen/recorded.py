"""Recorded demonstrations (e.g. rosbags from a real FR3) as world-model input.

A recorded demonstration has joint states and gripper width but no object poses, so the scene
is reconstructed from the robot: the target cube stands on the table where the gripper closed.
The demonstration becomes an action stream (joint targets resampled at a fixed rate, TCP poses
by forward kinematics on our FR3 model, closure from the measured width) that Dream2Fix's
operators perturb and a :class:`~failrecov_ros.datagen.world_model.WorldModel` rolls out.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from failrecov_ros.datagen import actions
from failrecov_ros.datagen.bags import Demonstration
from failrecov_ros.sim.ik import DlsIk
from failrecov_ros.sim.scene import Simulation
from failrecov_ros.sim.tasks import TARGET, Task, make_task


def stream_from_demonstration(demo: Demonstration, sim: Simulation,
                              rate_hz: float = 10.0) -> actions.ActionStream:
    """Resample ``demo`` at ``rate_hz`` and compute the TCP pose of every step."""
    if demo.times[-1] - demo.times[0] < 2.0 / rate_hz:
        raise ValueError(f"{demo.source}: demonstration shorter than two steps at {rate_hz} Hz")
    times = np.arange(demo.times[0], demo.times[-1] + 1e-9, 1.0 / rate_hz)
    arm_q = np.stack([np.interp(times, demo.times, demo.arm_q[:, j])
                      for j in range(demo.arm_q.shape[1])], axis=1)
    width = np.interp(times, demo.times, demo.gripper_width)
    b = sim.binding
    kinematics = DlsIk(sim.model, b.tcp_site, b.arm_joints, rest=b.home)
    tcp = np.empty((len(times), 7))
    for t, q in enumerate(arm_q):
        position, rotation = kinematics.forward(q)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, rotation.reshape(9))
        tcp[t] = [*position, *quat]
    return actions.ActionStream.from_states(times - times[0], arm_q, tcp,
                                            actions.closure_from_width(width))


def task_from_demonstration(stream: actions.ActionStream, task_name: str = "pick_cube",
                            seed: int = 0) -> Task:
    """The task with its target cube placed under the TCP at the first close keyframe."""
    closes = [k for k, kind in actions.keyframes(stream.closure) if kind == "close"]
    if not closes:
        raise ValueError("the demonstration never closes the gripper: no object to place")
    task = make_task(task_name, seed)
    grasp = stream.tcp[closes[0], :2]
    objects = tuple(dataclasses.replace(o, position=(float(grasp[0]), float(grasp[1])))
                    if o.name == TARGET else o for o in task.scene.objects)
    return dataclasses.replace(task, scene=dataclasses.replace(task.scene, objects=objects))
