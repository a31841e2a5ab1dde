"""Keypoint layouts: COCO's 17 body keypoints and COCO-WholeBody's 133, with their OKS sigmas
(COCO's cocoeval defaults; whole-body's from COCO-WholeBody's evaluation/myeval_wholebody.py,
as mmpose's configs/_base_/datasets/coco_wholebody.py copies them) and left/right flip pairs."""

from __future__ import annotations

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)

#: limbs as (keypoint, keypoint), 0-based (COCO's skeleton minus the head-to-shoulder links)
COCO_LIMBS: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4),
)

COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)

_FOOT_SIGMAS = (0.068, 0.066, 0.066, 0.092, 0.094, 0.094)
_FACE_SIGMAS = (
    0.042, 0.043, 0.044, 0.043, 0.040, 0.035, 0.031, 0.025, 0.020, 0.023, 0.029, 0.032, 0.037,
    0.038, 0.043, 0.041, 0.045, 0.013, 0.012, 0.011, 0.011, 0.012, 0.012, 0.011, 0.011, 0.013,
    0.015, 0.009, 0.007, 0.007, 0.007, 0.012, 0.009, 0.008, 0.016, 0.010, 0.017, 0.011, 0.009,
    0.011, 0.009, 0.007, 0.013, 0.008, 0.011, 0.012, 0.010, 0.034, 0.008, 0.008, 0.009, 0.008,
    0.008, 0.007, 0.010, 0.008, 0.009, 0.009, 0.009, 0.007, 0.007, 0.008, 0.011, 0.008, 0.008,
    0.008, 0.01, 0.008,
)
_HAND_SIGMAS = (
    0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018, 0.024, 0.022, 0.026,
    0.017, 0.021, 0.021, 0.032, 0.02, 0.019, 0.022, 0.031,
)
#: body 17, foot 6, face 68, left hand 21, right hand 21 (COCO-WholeBody's order)
WHOLEBODY_SIGMAS: tuple[float, ...] = (
    COCO_SIGMAS + _FOOT_SIGMAS + _FACE_SIGMAS + _HAND_SIGMAS + _HAND_SIGMAS)

#: COCO-WholeBody annotation fields in the order of the 133 keypoints, with their lengths
WHOLEBODY_PARTS: tuple[tuple[str, int], ...] = (
    ("keypoints", 17), ("foot_kpts", 6), ("face_kpts", 68), ("lefthand_kpts", 21),
    ("righthand_kpts", 21),
)


def _coco_flip() -> list[tuple[int, int]]:
    return [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]


def _face_flip() -> list[tuple[int, int]]:
    """The 68-point (iBUG 300-W) face layout's mirror pairs."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # eyebrows
    pairs += [(31, 35), (32, 34)]  # nose bottom
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    return pairs


def flip_index(num_keypoints: int) -> list[int]:
    """For each keypoint, the index of its mirror image (itself on the midline)."""
    pairs = _coco_flip()
    if num_keypoints == 133:
        pairs += [(17, 20), (18, 21), (19, 22)]
        pairs += [(23 + a, 23 + b) for a, b in _face_flip()]
        pairs += [(91 + i, 112 + i) for i in range(21)]
    elif num_keypoints != 17:
        raise ValueError(f"no flip layout for {num_keypoints} keypoints; known: 17 (COCO), 133 (whole-body)")
    index = list(range(num_keypoints))
    for a, b in pairs:
        index[a], index[b] = b, a
    return index


def sigmas_for(num_keypoints: int) -> tuple[float, ...]:
    if num_keypoints == 17:
        return COCO_SIGMAS
    if num_keypoints == 133:
        return WHOLEBODY_SIGMAS
    raise ValueError(f"no OKS sigmas for {num_keypoints} keypoints; known: 17 (COCO), 133 (whole-body)")
