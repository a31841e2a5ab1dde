# kdbench's Hinton KD on the tiny RetinaNet: the student of retinanet_tiny_shapes.py, the frozen
# teacher of retinanet_tiny_teacher_shapes.py (its checkpoint: KDBENCH_MM_TEACHER), the class
# distributions distilled at the anchors the assigner gives an object.
_base_ = './retinanet_tiny_shapes.py'
model = dict(
    _delete_=True,
    type='kdbench.DetDistiller',
    student={{_base_.model}},
    teacher={{_base_.teacher_model}},
    teacher_ckpt='{{$KDBENCH_MM_TEACHER:work_dirs/teacher.pth}}',
    distill_loss=dict(type='kdbench.KDLoss', temperature=4.0, ce_weight=1.0, kd_weight=1.0),
    probe_shape=(2, 3, 64, 64))
