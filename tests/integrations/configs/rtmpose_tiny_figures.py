# A tiny RTMPose (CSPNeXt at 1/8 width, RTMCCHead/SimCC) on kdbench's synthetic figures, on the CPU:
# the plain mmpose baseline. KDBENCH_MM_FIGURES is the figures' root (tests/integrations/
# test_mmpose.py generates the pose smoke tier's figures there).
default_scope = 'mmpose'
custom_imports = dict(imports=['kdbench.integrations.mmpose', 'kdbench.integrations.records'],
                      allow_failed_imports=False)
data_root = '{{$KDBENCH_MM_FIGURES:data/figures}}/'
codec = dict(type='SimCCLabel', input_size=(64, 64), sigma=(1.6, 1.6), simcc_split_ratio=2.0, normalize=False,
             use_dark=False)


def rtmpose(widen):
    """RTMPose-style estimator: CSPNeXt-P5 (deepen 0.167) at `widen`, an RTMCC SimCC head."""
    return dict(
        type='TopdownPoseEstimator',
        data_preprocessor=dict(type='PoseDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
        backbone=dict(_scope_='mmdet', type='CSPNeXt', arch='P5', expand_ratio=0.5, deepen_factor=0.167,
                      widen_factor=widen, out_indices=(4, ), channel_attention=True, norm_cfg=dict(type='BN'),
                      act_cfg=dict(type='SiLU')),
        head=dict(type='RTMCCHead', in_channels=int(1024 * widen), out_channels=17, input_size=codec['input_size'],
                  in_featuremap_size=tuple(s // 32 for s in codec['input_size']),
                  simcc_split_ratio=codec['simcc_split_ratio'], final_layer_kernel_size=3,
                  gau_cfg=dict(hidden_dims=32, s=16, expansion_factor=2, dropout_rate=0., drop_path=0.,
                               act_fn='SiLU', use_rel_bias=False, pos_enc=False),
                  loss=dict(type='KLDiscretLoss', use_target_weight=True, beta=10., label_softmax=True),
                  decoder=codec),
        test_cfg=dict(flip_test=False))


model = rtmpose(0.125)
teacher_model = rtmpose(0.25)

train_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='RandomFlip', direction='horizontal'),
    dict(type='RandomBBoxTransform', scale_factor=[0.8, 1.2], rotate_factor=30),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='PackPoseInputs'),
]
val_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='PackPoseInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CocoDataset', data_root=data_root, data_mode='topdown',
                 ann_file='annotations/person_keypoints_train.json', data_prefix=dict(img='train/'),
                 indices=16, pipeline=train_pipeline))  # 2 iterations an epoch
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False, round_up=False),
    dataset=dict(type='CocoDataset', data_root=data_root, data_mode='topdown',
                 ann_file='annotations/person_keypoints_val.json', data_prefix=dict(img='val/'),
                 test_mode=True, pipeline=val_pipeline))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader['dataset'], ann_file='annotations/person_keypoints_test.json',
                                                    data_prefix=dict(img='test/')))  # the record reports test
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/person_keypoints_val.json')
test_evaluator = dict(val_evaluator, ann_file=data_root + 'annotations/person_keypoints_test.json')

train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=2)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.),
                     clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=2, T_max=2,
                        convert_to_iter_based=True)]

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=3),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=2),
    sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='kdbench.RecordHook', results='{{$KDBENCH_MM_RESULTS:results}}')]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
log_level = 'WARNING'
load_from = None
resume = False
