"""Plug-ins that put kdbench's methods into OpenMMLab training (mmdetection, mmpose).

Optional: these modules need the `[mm]` environment that `scripts/install_mm.sh` builds
(mmcv 2.1.0 with ops, mmengine, mmdet 3.3.0, mmpose 1.3.2); the rest of kdbench never imports
them. A config loads them with

    custom_imports = dict(imports=["kdbench.integrations.mmdet"], allow_failed_imports=False)

and then names kdbench's parts under the `kdbench` registry scope:

- `type="kdbench.DetDistiller"` / `type="kdbench.PoseDistiller"`: a model wrapper holding the
  student and a frozen teacher, both built from ordinary mmdet / mmpose model configs;
- `type="kdbench.KDLoss"`, `"kdbench.DKDLoss"`, ... one loss module per registered kdbench
  method (`kdbench list methods`), the distiller's `distill_loss`; each wraps the very `Method`
  object `kdbench run` uses, so the loss code is shared, not copied;
- `type="kdbench.RecordHook"`: writes a kdbench result record (tier `external`) when training
  ends.
"""
