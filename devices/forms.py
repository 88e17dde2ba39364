"""The parameters some actions take (which fleet, which OS version, how long...).

Every form is built for one user, fleet and set of devices, offers only valid choices, and checks
again on submit: a forged POST meets the same rules as the dialog. `params()` gives the action's
parameters once the form is valid.
"""

from django import forms
from django.db.models import QuerySet
from django.http import QueryDict

from devices.filters import LIST_PARAMS, filtered_devices, list_querystring
from devices.models import Device, DeviceType, HostOSRelease, SavedView
from devices.versions import version_key
from fleets.models import Fleet, FleetRole
from fleets.selectors import fleets_for_user


class ActionForm(forms.Form):
    def __init__(self, *args, user, fleet: Fleet, devices: QuerySet[Device], **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.user, self.fleet, self.devices = user, fleet, devices

    def params(self) -> dict:
        raise NotImplementedError

    def architectures(self) -> list[str]:
        return sorted(set(self.devices.order_by().values_list("device_type__arch", flat=True).distinct()))

    def single_architecture(self) -> str:
        archs = self.architectures()
        if len(archs) > 1:
            raise forms.ValidationError(
                f"The selected devices have different CPU architectures ({', '.join(archs)}); "
                "select devices of one architecture at a time."
            )
        return archs[0] if archs else ""


class MoveForm(ActionForm):
    target_fleet = forms.ModelChoiceField(
        queryset=Fleet.objects.none(), label="Move to", widget=forms.RadioSelect, empty_label=None
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        candidates = (
            fleets_for_user(self.user, FleetRole.OPERATOR)
            .filter(organization_id=self.fleet.organization_id)
            .exclude(pk=self.fleet.pk)
            .select_related("default_device_type", "fleet_type")
            .order_by("name")
        )
        archs = self.architectures()
        self.compatible, self.incompatible = [], []
        for fleet in candidates:
            arch = fleet.default_device_type.arch
            if len(archs) == 1 and arch == archs[0]:
                self.compatible.append(fleet)
            else:
                self.incompatible.append((fleet, f"its devices are {arch}, these are {', '.join(archs)}"))
        # Every fleet the user may operate stays a valid *choice*, so a forged POST for an
        # incompatible one gets the reason below rather than a generic "invalid choice".
        self.fields["target_fleet"].queryset = candidates
        self.fields["target_fleet"].choices = [
            (f.pk, f"{f.name} ({f.fleet_type.name})") for f in self.compatible
        ]

    def clean_target_fleet(self):
        target = self.cleaned_data["target_fleet"]
        arch = self.single_architecture()
        if target.default_device_type.arch != arch:
            raise forms.ValidationError(
                f"{target.name} runs {target.default_device_type.arch} devices; these devices are {arch}. "
                "Devices can only move between fleets of the same CPU architecture."
            )
        limit = target.fleet_type.max_devices
        if limit is not None:
            moving = self.devices.count()
            present = Device.objects.filter(fleet=target).count()
            if present + moving > limit:
                raise forms.ValidationError(
                    f"{target.name} is a {target.fleet_type.name} fleet limited to {limit} devices; it has "
                    f"{present} and {moving} would move in."
                )
        return target

    def params(self) -> dict:
        target = self.cleaned_data["target_fleet"]
        return {"fleet_id": target.pk, "fleet_name": target.name, "arch": target.default_device_type.arch}


class CatalogVersionField(forms.ChoiceField):
    """Offers the newer versions (`choices`) but takes any catalog version of the devices' types,
    so a forged or stale downgrade gets the form's own reason, not "not one of the choices"."""

    catalog: frozenset = frozenset()

    def valid_value(self, value):
        return value in self.catalog or super().valid_value(value)


class OSUpdateForm(ActionForm):
    version = CatalogVersionField(label="Update to", choices=())

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        oldest = self.devices.order_by("os_version_key").values_list("os_version_key", flat=True).first() or 0
        types = self.devices.order_by().values("device_type_id").distinct()
        versions = (
            HostOSRelease.objects.filter(device_type__in=types, version_key__gt=oldest)
            .order_by("-version_key")
            .values_list("version", flat=True)
            .distinct()
        )
        self.fields["version"].choices = [(v, v) for v in dict.fromkeys(versions)]
        self.fields["version"].catalog = frozenset(
            HostOSRelease.objects.filter(device_type__in=types).values_list("version", flat=True)
        )
        if not self.fields["version"].choices:
            self.fields["version"].help_text = "No newer version is available for these devices."

    def clean_version(self):
        version = self.cleaned_data["version"]
        devices = list(self.devices.order_by()[:2])
        if len(devices) == 1 and version_key(version) <= devices[0].os_version_key:
            raise forms.ValidationError(
                f"The host OS cannot be downgraded or reinstalled: {devices[0].name} runs "
                f"{devices[0].os_version}, and {version} is not newer."
            )
        return version

    def params(self) -> dict:
        version = self.cleaned_data["version"]
        return {"version": version, "version_key": version_key(version)}


class DeviceTypeForm(ActionForm):
    device_type = forms.ModelChoiceField(
        queryset=DeviceType.objects.none(), label="New device type", empty_label=None
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        archs = self.architectures()
        self.fields["device_type"].queryset = DeviceType.objects.filter(
            arch__in=archs[:1] if len(archs) == 1 else []
        )
        self.fields["device_type"].help_text = "Only device types of the same CPU architecture are offered."

    def clean_device_type(self):
        device_type = self.cleaned_data["device_type"]
        arch = self.single_architecture()
        if device_type.arch != arch:
            raise forms.ValidationError(
                f"{device_type.name} is {device_type.arch}; these devices are {arch}."
            )
        return device_type

    def params(self) -> dict:
        device_type = self.cleaned_data["device_type"]
        return {
            "device_type_id": device_type.pk,
            "device_type": device_type.slug,
            "device_type_name": device_type.name,
            "arch": device_type.arch,
        }


SUPPORT_PERIODS = [
    ("1", "1 hour"),
    ("6", "6 hours"),
    ("12", "12 hours"),
    ("24", "1 day"),
    ("168", "7 days"),
    ("custom", "Custom"),
]


class SupportAccessForm(ActionForm):
    period = forms.ChoiceField(label="For", choices=SUPPORT_PERIODS, initial="24", widget=forms.RadioSelect)
    custom_hours = forms.IntegerField(
        label="Custom period, in hours",
        min_value=1,
        max_value=30 * 24,
        required=False,
        help_text="Up to 30 days.",
    )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("period") == "custom" and not cleaned.get("custom_hours"):
            self.add_error("custom_hours", "Give the number of hours.")
        return cleaned

    def params(self) -> dict:
        period = self.cleaned_data["period"]
        hours = self.cleaned_data["custom_hours"] if period == "custom" else int(period)
        label = dict(SUPPORT_PERIODS).get(period) if period != "custom" else f"{hours} hours"
        return {"hours": hours, "label": label}


class LockOverrideForm(ActionForm):
    enabled = forms.TypedChoiceField(
        label="Update lock",
        choices=[
            ("1", "Override the lock: let the pending update or restart through"),
            ("0", "Respect the lock again"),
        ],
        coerce=lambda value: value == "1",
        initial="1",
        widget=forms.RadioSelect,
    )

    def params(self) -> dict:
        return {"enabled": self.cleaned_data["enabled"]}


class SavedViewForm(forms.Form):
    """Name the filters a fleet's device list shows now.

    The filters arrive as the list's own fields (htmx posts the filter form as it stands, so what is
    saved is what is on screen), or without JavaScript as `query`, the page's querystring.
    """

    name = forms.CharField(max_length=SavedView._meta.get_field("name").max_length, strip=True)

    def __init__(self, data: QueryDict, *, fleet, owner):
        super().__init__(data)
        self.fleet, self.owner = fleet, owner
        live = any(key in data for key in LIST_PARAMS)
        self.query = list_querystring(data if live else QueryDict(data.get("query", "")))

    def clean_name(self):
        name = self.cleaned_data["name"]
        if SavedView.objects.filter(fleet=self.fleet, owner=self.owner, name__iexact=name).exists():
            raise forms.ValidationError(f"You already have a view named “{name}” in this fleet.")
        return name

    def clean(self):
        if not self.query:
            raise forms.ValidationError("Choose some filters or a sort first: there is nothing to save.")
        if len(self.query) > SavedView._meta.get_field("query").max_length:
            raise forms.ValidationError("These filters are too long to save.")
        try:
            filtered_devices(Device.objects.none(), self.query)
        except ValueError as error:
            raise forms.ValidationError(f"The filters are not valid: {error}") from None
        return self.cleaned_data

    def first_error(self) -> str:
        return next(iter(msg for msgs in self.errors.values() for msg in msgs), "")
