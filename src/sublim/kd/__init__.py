"""Classical and feature knowledge distillation on CIFAR-style and KD_wo_CE models.

`kd.models`: the CIFAR zoo (RepDistiller's ResNets, WRNs, VGGs, MobileNetV2, ShuffleNetV1/V2 and
CIFAR ResNet50), mdistiller's ImageNet models (torchvision-layout ResNet18/34/50, MobileNetV1) and
the KD_wo_CE models (torchvision-layout ResNets and VGG-BNs, MobileNetV2 x1, ViTs), with named
feature taps and generalized layers; `kd.losses`: the distillation methods as registered components;
`kd.config`, `kd.train`, `kd.runner`: resumable experiments; `kd.sweep`: grids of them;
`kd.pretrained`: torchvision ImageNet weights for teachers.
"""
