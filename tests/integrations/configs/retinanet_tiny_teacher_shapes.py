# The teacher: the same RetinaNet at twice the width, trained the plain mmdet way.
_base_ = './retinanet_tiny_shapes.py'
model = {{_base_.teacher_model}}
