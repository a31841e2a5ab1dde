# The teacher: the same RTMPose at twice the width, trained the plain mmpose way.
_base_ = './rtmpose_tiny_figures.py'
model = {{_base_.teacher_model}}
train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=1, T_max=1,
                        convert_to_iter_based=True)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1))
