"""hvgate: builds libvirt/QEMU cell images, smoke-tests them and judges which versions are safe."""

__version__ = "0.1.0"
