"""Input of the fleet and organization pages. Forms validate shape only; the rules that depend on
the database (a name already taken, a type the fleet cannot have) live in fleets.services, which
checks them again inside the change's transaction."""

import re
from datetime import timedelta

from django import forms
from django.core.exceptions import ValidationError

from devices.models import DeviceType
from fleets.models import FleetRole, FleetType, OrgRole

FLEET_NAME_MIN = 4
FLEET_NAME_MAX = 100
FLEET_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]")
FLEET_NAME_HELP = (
    f"{FLEET_NAME_MIN} to {FLEET_NAME_MAX} characters: letters, digits, hyphens, underscores and dots, "
    "starting with a letter or digit. Unique in the organization, whatever the case."
)


def validate_fleet_name(name: str) -> None:
    if not FLEET_NAME_MIN <= len(name) <= FLEET_NAME_MAX:
        raise ValidationError(f"Use {FLEET_NAME_MIN} to {FLEET_NAME_MAX} characters (this has {len(name)}).")
    bad = sorted({c for c in name if not FLEET_NAME_CHARS.fullmatch(c)})
    if bad:
        shown = " ".join("space" if c == " " else c for c in bad)
        raise ValidationError(
            f"Use only letters, digits, hyphens (-), underscores (_) and dots (.); not: {shown}"
        )
    if not name[0].isalnum():
        raise ValidationError("Start with a letter or a digit.")


class FleetNameField(forms.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", FLEET_NAME_MAX + 50)  # longer input gets the length message
        kwargs.setdefault("help_text", FLEET_NAME_HELP)
        super().__init__(validators=[validate_fleet_name], **kwargs)


class FleetCreateForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=None, to_field_name="handle", empty_label=None)
    name = FleetNameField()
    fleet_type = forms.ModelChoiceField(
        queryset=FleetType.objects.filter(is_legacy=False),
        to_field_name="slug",
        empty_label=None,
        help_text="Legacy and Classic are old types and cannot be chosen for a new fleet.",
    )
    default_device_type = forms.ModelChoiceField(
        queryset=DeviceType.objects.all(),
        to_field_name="slug",
        empty_label=None,
        help_text="Devices of any type with the same CPU architecture can join.",
    )

    def __init__(self, *args, organizations, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = organizations


class FleetRenameForm(forms.Form):
    name = FleetNameField(label="New name")


class FleetTypeForm(forms.Form):
    fleet_type = forms.ModelChoiceField(
        queryset=FleetType.objects.all(), to_field_name="slug", empty_label=None, label="New fleet type"
    )


class TransferForm(forms.Form):
    organization = forms.SlugField(label="Target organization")
    confirm = forms.CharField(required=False)


class DeleteFleetForm(forms.Form):
    confirm = forms.CharField(required=False)


SUPPORT_DURATIONS = {
    "1h": ("1 hour", timedelta(hours=1)),
    "6h": ("6 hours", timedelta(hours=6)),
    "12h": ("12 hours", timedelta(hours=12)),
    "1d": ("1 day", timedelta(days=1)),
    "7d": ("7 days", timedelta(days=7)),
}
SUPPORT_MAX = timedelta(days=30)


class SupportGrantForm(forms.Form):
    duration = forms.ChoiceField(
        choices=[(key, label) for key, (label, _) in SUPPORT_DURATIONS.items()] + [("custom", "Custom")],
        initial="1d",
    )
    custom_amount = forms.IntegerField(required=False, min_value=1, label="Custom period")
    custom_unit = forms.ChoiceField(
        choices=[("hours", "hours"), ("days", "days")], required=False, initial="hours"
    )

    def clean(self):
        data = super().clean()
        if data.get("duration") != "custom":
            if data.get("duration"):
                data["period"] = SUPPORT_DURATIONS[data["duration"]][1]
            return data
        amount = data.get("custom_amount")
        if not amount:
            raise ValidationError("Give the custom period as a number of hours or days.")
        unit = data.get("custom_unit") or "hours"
        # Compared before building the timedelta: a huge amount overflows it.
        if amount > SUPPORT_MAX / timedelta(**{unit: 1}):
            raise ValidationError("Support access can be granted for at most 30 days at a time.")
        period = timedelta(**{unit: amount})
        data["period"] = period
        return data


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=FleetRole.choices, initial=FleetRole.DEVELOPER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=FleetRole.choices)


class OrgMemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=OrgRole.choices, initial=OrgRole.MEMBER)


class OrgMemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=OrgRole.choices)
