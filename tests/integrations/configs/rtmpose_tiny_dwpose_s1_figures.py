# DWPose stage 1 with kdbench's `dwpose`: the student of rtmpose_tiny_figures.py from scratch, the
# frozen teacher of rtmpose_tiny_teacher_figures.py (checkpoint: KDBENCH_MM_TEACHER);
# L_gt + r(e)·(L_fea + L_logit), r(e) = 1 − e/E_max.
_base_ = './rtmpose_tiny_figures.py'
model = dict(
    _delete_=True,
    type='kdbench.PoseDistiller',
    stage=1,
    student={{_base_.model}},
    teacher={{_base_.teacher_model}},
    teacher_ckpt='{{$KDBENCH_MM_TEACHER:work_dirs/teacher.pth}}',
    distill_loss=dict(type='kdbench.DWPOSELoss'),
    probe_shape=(2, 3, 64, 64),
    epochs=2)
