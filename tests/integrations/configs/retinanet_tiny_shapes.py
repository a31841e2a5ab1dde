# A tiny RetinaNet (ResNet-18 at 1/8 width, FPN, RetinaHead) on kdbench's synthetic shapes scenes,
# a few iterations on the CPU: the plain mmdet baseline. KDBENCH_MM_SHAPES is the scenes' root
# (tests/integrations/test_mmdet.py generates the detection smoke tier's scenes there). score_thr 0:
# after a few iterations no score passes 0.05, and mmdet's CocoMetric reports nothing without boxes.
default_scope = 'mmdet'
custom_imports = dict(imports=['kdbench.integrations.mmdet', 'kdbench.integrations.records'],
                      allow_failed_imports=False)
data_root = '{{$KDBENCH_MM_SHAPES:data/shapes}}/'
metainfo = dict(classes=('rectangle', 'circle', 'triangle'))


def retinanet(width):
    """RetinaNet with ResNet-18 stages of width·(1, 2, 4, 8) channels and FPN/head of 2·width."""
    return dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3,
                               bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type='ResNet', depth=18, base_channels=width, num_stages=4, out_indices=(1, 2, 3),
                      frozen_stages=-1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
                      style='pytorch', init_cfg=None),
        neck=dict(type='FPN', in_channels=[2 * width, 4 * width, 8 * width], out_channels=2 * width,
                  start_level=0, add_extra_convs='on_input', num_outs=3),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=2 * width, stacked_convs=1, feat_channels=2 * width,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=2, scales_per_octave=1,
                                  ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1),
                       sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=200, min_bbox_size=0, score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5),
                      max_per_img=20))


model = retinanet(8)
teacher_model = retinanet(16)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=1), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader['dataset'], ann_file='annotations/instances_test.json',
                                                    data_prefix=dict(img='test/')))  # the record reports test
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox')
test_evaluator = dict(val_evaluator, ann_file=data_root + 'annotations/instances_test.json')

train_cfg = dict(type='IterBasedTrainLoop', max_iters=8, val_interval=8)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=2e-3, weight_decay=1e-4),
                     clip_grad=dict(max_norm=10.0))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=8, T_max=8)]

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=4),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=8, by_epoch=False),
    sampler_seed=dict(type='DistSamplerSeedHook'))
custom_hooks = [dict(type='kdbench.RecordHook', results='{{$KDBENCH_MM_RESULTS:results}}')]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
log_level = 'WARNING'
load_from = None
resume = False
