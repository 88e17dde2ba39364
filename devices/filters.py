"""The device list's filters. The same FilterSet turns a saved view's or a selection's querystring
back into a queryset, so "all N matching" is carried as the filter, never as ids."""

import django_filters
from django import forms
from django.db.models import Q, QuerySet
from django.http import QueryDict

from devices.models import (
    ActionKind,
    ActionScope,
    ActionState,
    DeliveryState,
    Device,
    DeviceAction,
    DeviceStatus,
    DeviceType,
)
from devices.selectors import status_q
from devices.versions import is_version, version_key

YES_NO = [("yes", "Yes"), ("no", "No")]


class PlainLabelsForm(forms.Form):
    """Filter bars show "Status", not "Status:"."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class DeviceFilterForm(PlainLabelsForm):
    def _clean_version(self, field: str) -> str:
        value = (self.cleaned_data.get(field) or "").strip()
        if value and not is_version(value):
            raise forms.ValidationError("Use a version like 2.12.0.")
        return value

    def clean_os_version(self):
        return self._clean_version("os_version")

    def clean_agent_version(self):
        return self._clean_version("agent_version")


class DeviceFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="filter_search", label="Name or UUID")
    status = django_filters.ChoiceFilter(
        choices=DeviceStatus.choices, method="filter_status", label="Status", empty_label="Any"
    )
    device_type = django_filters.ModelChoiceFilter(
        queryset=DeviceType.objects.all(), to_field_name="slug", label="Device type", empty_label="Any"
    )
    os_version = django_filters.CharFilter(method="filter_os_version", label="Version")
    os_op = django_filters.ChoiceFilter(
        choices=[("eq", "equal to"), ("lt", "older than")],
        method="filter_noop",
        label="Host OS",
        empty_label=None,
    )
    agent_version = django_filters.CharFilter(method="filter_agent_version", label="Agent version")
    public_url = django_filters.ChoiceFilter(
        choices=YES_NO, method="filter_flag", label="Public URL", empty_label="Any"
    )
    local_mode = django_filters.ChoiceFilter(
        choices=YES_NO, method="filter_flag", label="Local mode", empty_label="Any"
    )
    lock_held = django_filters.ChoiceFilter(
        choices=YES_NO, method="filter_flag", label="Update lock", empty_label="Any"
    )

    FLAG_FIELDS = {
        "public_url": "public_url_enabled",
        "local_mode": "local_mode",
        "lock_held": "update_lock_held",
    }

    class Meta:
        model = Device
        fields = []
        form = DeviceFilterForm

    def filter_search(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        query = Q(name__icontains=value)
        compact = value.replace("-", "").lower()
        if len(compact) >= 4 and all(c in "0123456789abcdef" for c in compact):
            query |= Q(uuid__startswith=compact)
        return queryset.filter(query)

    def filter_status(self, queryset, name, value):
        return queryset.filter(status_q(value))

    def filter_os_version(self, queryset, name, value):
        key = version_key(value)
        if self.form.cleaned_data.get("os_op") == "lt":
            return queryset.filter(os_version_key__lt=key)
        return queryset.filter(os_version_key=key)

    def filter_agent_version(self, queryset, name, value):
        return queryset.filter(agent_version_key=version_key(value))

    def filter_flag(self, queryset, name, value):
        return queryset.filter(**{self.FLAG_FIELDS[name]: value == "yes"})

    def filter_noop(self, queryset, name, value):
        return queryset


LIST_PARAMS = (*DeviceFilter.base_filters, "sort")


def list_querystring(params) -> str:
    """The filters and sort of a device list in one canonical form: no paging, no blanks, a fixed order.

    What a selection carries into its confirmation step, what a saved view stores, and how the page
    recognises the saved view it is showing.
    """
    from devices.selectors import DEFAULT_SORT, DEVICE_SORTS

    kept = QueryDict(mutable=True)
    for key in LIST_PARAMS:
        value = (params.get(key) or "").strip()
        if value:
            kept[key] = value
    if "os_version" not in kept or kept.get("os_op") == "eq":
        kept.pop("os_op", None)
    if kept.get("sort") not in DEVICE_SORTS or kept.get("sort") == DEFAULT_SORT:
        kept.pop("sort", None)
    return kept.urlencode()


def filtered_devices(
    queryset: QuerySet[Device], query: str | QueryDict
) -> tuple[QuerySet[Device], DeviceFilter]:
    """Apply a filter querystring to an already-scoped queryset. Invalid filters raise ValueError."""
    data = QueryDict(query) if isinstance(query, str) else query
    device_filter = DeviceFilter(data, queryset=queryset)
    if not device_filter.is_valid():
        errors = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in device_filter.errors.items())
        raise ValueError(errors)
    return device_filter.qs, device_filter


class ActionFilter(django_filters.FilterSet):
    """The Activity tab's filters over the audit log."""

    kind = django_filters.ChoiceFilter(choices=ActionKind.choices, label="Action", empty_label="Any")
    state = django_filters.ChoiceFilter(choices=ActionState.choices, label="State", empty_label="Any")
    scope = django_filters.ChoiceFilter(choices=ActionScope.choices, label="Scope", empty_label="Any")
    actor = django_filters.CharFilter(field_name="actor_name", lookup_expr="icontains", label="Who")
    since = django_filters.DateFilter(
        field_name="created_at",
        lookup_expr="date__gte",
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    until = django_filters.DateFilter(
        field_name="created_at",
        lookup_expr="date__lte",
        label="To",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    class Meta:
        model = DeviceAction
        fields = []
        form = PlainLabelsForm


class DeviceActivityFilter(ActionFilter):
    """A device's Activity page: the Activity tab's filters, and this device's own outcome."""

    outcome = django_filters.ChoiceFilter(
        field_name="device_outcome", choices=DeliveryState.choices, label="This device", empty_label="Any"
    )
