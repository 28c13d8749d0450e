"""Diagnosis-quality metrics with the papers' own definitions (DIGEST sections 1.5, 3.5, 6.2).

Each function takes aligned sequences of predicted and ground-truth :class:`Diagnosis` and
returns a float in [0, 1] (cosine in [-1, 1]); a rejected (``unknown``) prediction is simply
wrong. Functions raise ValueError on misaligned or empty inputs rather than return a number
that means nothing.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence

from failrecov_ros.core.schema import CorrectionKind, Diagnosis, Directive
from failrecov_ros.core.taxonomy import GRIPPER_TYPES, FailureType, family

#: Dream2Fix partial-credit cap on the bin difference.
DREAM2FIX_CAP = 3
_D2F_TRANSLATION = frozenset({FailureType.TRANSLATION_X, FailureType.TRANSLATION_Y})
#: Label types Dream2Fix correction accuracy is defined for.
_D2F_TYPES = _D2F_TRANSLATION | GRIPPER_TYPES


def is_dream2fix_label(truth: Diagnosis) -> bool:
    """A Dream2Fix label: a translation or gripper failure whose correction is a directive.

    Each paper scores its correction on its own labels. A FailSafe-procedure label of the same
    type carries a dA (its directive is that dA binned, for the Dream2Fix answer format): it is
    FailSafe's to score, by cosine. Scored here it would cap even a perfect model below 1: an
    early release's dA often leaves the gripper alone, so its label has no keyframe to match.
    """
    c = truth.correction
    in_directive_form = c.kind is CorrectionKind.DIRECTIVE or (
        c.kind is CorrectionKind.NONE and c.directive is not None and c.ee_delta is None)
    return truth.failure_type in _D2F_TYPES and in_directive_form


def is_failsafe_label(truth: Diagnosis) -> bool:
    """A FailSafe label: a failure whose correction is the 7-DoF end-effector delta dA.

    A label that names no primary form (kind ``none``) counts when it carries a delta.
    """
    c = truth.correction
    return (truth.failed and c.ee_delta is not None
            and c.kind in (CorrectionKind.EE_DELTA, CorrectionKind.NONE))


def _pairs(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis]):
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labels")
    if not truth:
        raise ValueError("no samples to score")
    return list(zip(predicted, truth, strict=True))


def binary_accuracy(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis]) -> float:
    """Success/failure detection accuracy (Dream2Fix BinSucc, FailSafe "binary success")."""
    pairs = _pairs(predicted, truth)
    return sum(not p.is_unknown and p.failed == t.failed for p, t in pairs) / len(pairs)


def type_axis_accuracy(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis]) -> float:
    """FailSafe "accuracy": failure mode and axis both right, over all samples.

    A success sample counts as right when the prediction is also a success, which is why a
    model that always answers "no failure" scores its binary accuracy here (FailSafe Table V).
    """
    pairs = _pairs(predicted, truth)
    return sum(p.failure_type == t.failure_type for p, t in pairs) / len(pairs)


def type_accuracy(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis]) -> float:
    """Failure family right (translation, rotation, gripper, ...), axis ignored."""
    pairs = _pairs(predicted, truth)
    return sum(family(p.failure_type) == family(t.failure_type) for p, t in pairs) / len(pairs)


def _axis_score(pred: Directive, gt: Directive, axis: str, cap: int) -> float:
    """s_u = 1(dir_gt == dir_pred) * max(0, 1 - |n_gt - n_pred| / cap)."""
    d_gt, d_pred = getattr(gt, f"dir_{axis}"), getattr(pred, f"dir_{axis}")
    n_gt, n_pred = getattr(gt, f"bins_{axis}"), getattr(pred, f"bins_{axis}")
    return float(d_gt == d_pred) * max(0.0, 1.0 - abs(n_gt - n_pred) / cap)


def dream2fix_correction_score(predicted: Diagnosis, truth: Diagnosis,
                               keyframe_tolerance: int = 2, cap: int = DREAM2FIX_CAP) -> float:
    """Dream2Fix correction accuracy of one sample, with partial credit.

    Translation: (s_type + s_stage + s_x + s_y) / 4; gripper: (s_type + s_stage + s_k) / 3,
    s_k = 1(|k_gt - k_pred| <= keyframe_tolerance) (the paper's delta_k, unpublished), and a
    prediction without a keyframe (-1) earns no s_k even next to k_gt = 0. s_type
    is TYPE=translation for translations and the exact MODE for gripper failures (at least as
    strict as the paper's TYPE field).
    """
    if predicted.is_unknown:
        return 0.0
    gt_dir = truth.correction.directive or Directive()
    pred_dir = predicted.correction.directive or Directive()
    s_stage = float(predicted.stage == truth.stage)
    if truth.failure_type in _D2F_TRANSLATION:
        s_type = float(predicted.failure_type in _D2F_TRANSLATION)
        return (s_type + s_stage + _axis_score(pred_dir, gt_dir, "x", cap)
                + _axis_score(pred_dir, gt_dir, "y", cap)) / 4
    if truth.failure_type in GRIPPER_TYPES:
        s_type = float(predicted.failure_type == truth.failure_type)
        s_k = float(pred_dir.keyframe >= 0
                    and abs(gt_dir.keyframe - pred_dir.keyframe) <= keyframe_tolerance)
        return (s_type + s_stage + s_k) / 3
    raise ValueError(f"Dream2Fix correction accuracy is defined for translation and gripper "
                     f"failures, not {truth.failure_type.value!r}")


def dream2fix_correction_accuracy(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis],
                                  keyframe_tolerance: int = 2,
                                  cap: int = DREAM2FIX_CAP) -> float:
    """Mean correction score over the Dream2Fix labels (:func:`is_dream2fix_label`)."""
    scored = [dream2fix_correction_score(p, t, keyframe_tolerance, cap)
              for p, t in _pairs(predicted, truth) if is_dream2fix_label(t)]
    if not scored:
        raise ValueError("no Dream2Fix labels (translation or gripper failures with a "
                         "directive) among the labels")
    return sum(scored) / len(scored)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 when either vector is zero (an all-zero dA recovers nothing)."""
    if len(a) != len(b):
        raise ValueError(f"vectors of length {len(a)} and {len(b)}")
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm > 0 else 0.0


def delta_cosine(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis]) -> float:
    """FailSafe dA cosine: mean cosine of predicted and true 7-DoF deltas.

    Over the FailSafe labels (:func:`is_failsafe_label`; a Dream2Fix label's delta is its
    directive restated); a prediction without a delta counts as the zero vector.
    """
    values = [cosine(p.correction.ee_delta or (0.0,) * 7, t.correction.ee_delta)
              for p, t in _pairs(predicted, truth) if is_failsafe_label(t)]
    if not values:
        raise ValueError("no FailSafe labels (failures with an end-effector delta) among the "
                         "labels")
    return sum(values) / len(values)


def delta_length_ratio(predicted: Sequence[Diagnosis], truth: Sequence[Diagnosis]) -> float:
    """Median of predicted / true translation length of dA over the FailSafe labels.

    Ours, beside the cosine, which is blind to length: a delta that points right but is half
    as long under-corrects. Only pairs where both translations are non-zero count (a missing
    prediction is the cosine's business).
    """
    ratios = []
    for p, t in _pairs(predicted, truth):
        if not is_failsafe_label(t) or p.correction.ee_delta is None:
            continue
        true_length = math.hypot(*t.correction.ee_delta[:3])
        predicted_length = math.hypot(*p.correction.ee_delta[:3])
        if true_length > 0 and predicted_length > 0:
            ratios.append(predicted_length / true_length)
    if not ratios:
        raise ValueError("no FailSafe labels with a translation in both the label and the "
                         "prediction")
    return percentile(ratios, 50)


def label_agreement(
        labels: Iterable[tuple[Hashable, str, Sequence[float]]]) -> dict[str, tuple[int, float]]:
    """Per failure type: pairs, and mean cosine between dA labels of windows of one failed run.

    ``labels`` are (run, failure type, dA). FailSafe cuts several windows from each failed run
    and matches each deviated pose to a corrective pose drawn at random along the clean run,
    so two labels of the same failure may point different ways: where they agree little, much
    of dA is chance rather than something a model could see in the window.
    """
    runs: dict[tuple[Hashable, str], list[Sequence[float]]] = defaultdict(list)
    for run, failure_type, delta in labels:
        runs[(run, failure_type)].append(delta)
    values: dict[str, list[float]] = defaultdict(list)
    for (_, failure_type), deltas in runs.items():
        values[failure_type] += [cosine(a, b) for a, b in itertools.combinations(deltas, 2)]
    return {t: (len(v), sum(v) / len(v)) for t, v in sorted(values.items()) if v}


def rouge_l(candidate: str, reference: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure over lower-cased whitespace tokens (longest common subsequence)."""
    c, r = candidate.lower().split(), reference.lower().split()
    if not c or not r:
        return float(c == r)
    previous = [0] * (len(r) + 1)
    for token in c:
        current = [0]
        for j, ref_token in enumerate(r, start=1):
            current.append(previous[j - 1] + 1 if token == ref_token
                           else max(previous[j], current[j - 1]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def confusion_counts(pairs: Iterable[tuple[str, str]]) -> dict[str, int]:
    """``"true -> predicted"`` counts of (true, predicted) class names, commonest first.

    Ties go by name, so two runs with the same predictions write the same file.
    """
    counts = Counter(f"{true} -> {guess}" for true, guess in pairs)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def type_confusion(predicted: Sequence[Diagnosis],
                   truth: Sequence[Diagnosis]) -> dict[str, int]:
    """Which failure types (axis included) a model takes for which: where its errors go.

    Ours, beside the accuracies, which say how often a model is wrong but not how.
    """
    return confusion_counts((t.failure_type.value, p.failure_type.value)
                            for p, t in _pairs(predicted, truth))


# --- episode-level metrics (replayed bags, live runs) ---------------------------------------
#: A failed diagnosis at or above this confidence counts; the executor's default takeover
#: threshold (config/skill_executor.yaml ``confidence_threshold``), so scores match behaviour.
CONFIDENT = 0.5
NS = 1_000_000_000


def is_alarm(diagnosis: Diagnosis, min_confidence: float = CONFIDENT) -> bool:
    """A diagnosis the executor would act on: failed with enough confidence."""
    return diagnosis.failed and diagnosis.confidence >= min_confidence


def episode_verdict(diagnoses: Sequence[Diagnosis],
                    min_confidence: float = CONFIDENT) -> Diagnosis:
    """The one diagnosis an episode is scored by.

    The first confident failure (what the executor would have acted on), else the last
    diagnosis (the monitor's final word on an episode it never flagged); an episode the
    monitor never analysed is ``unknown``, which every accuracy counts as wrong.
    Diagnoses must be in publication order.
    """
    for diagnosis in diagnoses:
        if is_alarm(diagnosis, min_confidence):
            return diagnosis
    return diagnoses[-1] if diagnoses else Diagnosis.unknown("no diagnosis in the episode")


def detection_delay_s(diagnoses: Sequence[Diagnosis], onset_ns: int,
                      min_confidence: float = CONFIDENT) -> float | None:
    """Seconds from failure onset to the first confident failed diagnosis at or after it.

    Measured on the analysed window's last frame stamp (``stamp_ns``), i.e. how much footage
    after the onset the monitor needed; the model latency comes on top (reported apart, so
    this figure is deterministic under replay). None when the failure was never detected;
    alarms before the onset do not count as detections.
    """
    for diagnosis in diagnoses:
        if is_alarm(diagnosis, min_confidence) and diagnosis.stamp_ns >= onset_ns:
            return (diagnosis.stamp_ns - onset_ns) / NS
    return None


def false_alarms_per_minute(episodes: Sequence[tuple[Sequence[Diagnosis], float]],
                            min_confidence: float = CONFIDENT) -> float:
    """Confident failed diagnoses per minute over successful episodes.

    ``episodes`` holds (diagnoses, duration in s) of episodes labelled successful; every
    confident failure is one alarm (each would stop the robot).
    """
    minutes = sum(duration for _, duration in episodes) / 60.0
    if minutes <= 0:
        raise ValueError("no successful episode time to count false alarms over")
    alarms = sum(is_alarm(d, min_confidence) for diagnoses, _ in episodes for d in diagnoses)
    return alarms / minutes


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / max / mean (s) and the count of model latencies."""
    if not latencies_s:
        raise ValueError("no latencies")
    return {"count": len(latencies_s), "p50_s": percentile(latencies_s, 50),
            "p95_s": percentile(latencies_s, 95), "max_s": max(latencies_s),
            "mean_s": sum(latencies_s) / len(latencies_s)}
