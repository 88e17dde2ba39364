"""Saved views: a user's named filter sets of one fleet's device list."""

from devices.models import SavedView


def saved_view_create(*, fleet, owner, name: str, query: str) -> SavedView:
    """The caller has checked that `owner` may read `fleet` and that `query` is a valid filter."""
    return SavedView.objects.create(fleet=fleet, owner=owner, name=name, query=query)


def saved_view_delete(*, view: SavedView, actor) -> None:
    if view.owner_id != actor.pk:
        raise PermissionError("Only its owner can delete a saved view.")
    view.delete()
