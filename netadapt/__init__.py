"""netadapt: adapt a pre-trained MobileNetV3 to a device's latency budget (NetAdapt)."""

__version__ = "0.1.0"
