"""Device types and the host OS versions offered for them: reference data seeded by migration."""

from devices.versions import version_key

DEVICE_TYPES = [
    ("raspberry-pi", "Raspberry Pi (v1 / Zero)", "rpi"),
    ("raspberrypi3", "Raspberry Pi 3", "armv7hf"),
    ("beaglebone-black", "BeagleBone Black", "armv7hf"),
    ("raspberrypi4-64", "Raspberry Pi 4 (64-bit)", "aarch64"),
    ("jetson-nano", "Nvidia Jetson Nano", "aarch64"),
    ("intel-nuc", "Intel NUC", "amd64"),
    ("generic-amd64", "Generic x86-64", "amd64"),
]

OS_VERSIONS = [
    "2.9.7",
    "2.11.2",
    "2.12.3",
    "2.29.2",
    "2.48.0",
    "2.58.3",
    "2.83.10",
    "2.95.12",
    "5.1.20",
    "6.0.13",
]


def create_catalog(DeviceType, HostOSRelease) -> None:
    """Create the device types and their OS catalog; takes the models so a migration can pass its own."""
    for slug, name, arch in DEVICE_TYPES:
        device_type, _ = DeviceType.objects.update_or_create(slug=slug, defaults={"name": name, "arch": arch})
        for version in OS_VERSIONS:
            HostOSRelease.objects.get_or_create(
                device_type=device_type, version=version, defaults={"version_key": version_key(version)}
            )
