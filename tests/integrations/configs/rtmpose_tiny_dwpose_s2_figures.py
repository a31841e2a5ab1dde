# DWPose stage 2 with kdbench's `dwpose`: the stage-1 student (checkpoint: KDBENCH_MM_TEACHER, a
# stage-1 distiller checkpoint) is the frozen teacher; a fresh head on its frozen backbone learns
# from its logits only (weight 1, no ground-truth loss, no decay). The exported model (the record's
# student checkpoint) is the stage-1 backbone with the stage-2 head. DWPose trains stage 2 for
# about 20% of stage 1's epochs; here 1 of 2.
_base_ = './rtmpose_tiny_figures.py'
model = dict(
    _delete_=True,
    type='kdbench.PoseDistiller',
    stage=2,
    student={{_base_.model}},
    teacher={{_base_.model}},
    teacher_ckpt='{{$KDBENCH_MM_TEACHER:work_dirs/teacher.pth}}',
    distill_loss=dict(type='kdbench.DWPOSELoss'),
    probe_shape=(2, 3, 64, 64),
    epochs=1)
train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=1, T_max=1,
                        convert_to_iter_based=True)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1))
