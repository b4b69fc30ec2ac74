"""Classical and feature knowledge distillation on CIFAR-style models (issue 6, in progress).

`kd.models`: CIFAR ResNets, WRNs, VGGs and MobileNetV2 with named feature taps;
`kd.losses`: the distillation methods as registered components that read taps by name.
"""
