from django import forms
from django.http import QueryDict

from devices.filters import LIST_PARAMS, filtered_devices, list_querystring
from devices.models import Device, SavedView


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
