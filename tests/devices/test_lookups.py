"""`field__any_of`: the rows `field__in` finds, on PostgreSQL (`= ANY(array)`) and elsewhere (`IN`)."""

import pytest
from django.db import connection

from devices.models import ActionDelivery, Device
from devices.services import action_create, action_expand
from tests.factories import Personas, make_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def devices():
    p = Personas()
    made = [make_device(p.fleet) for _ in range(4)]
    return p, made


@pytest.mark.parametrize(
    "pick",
    [lambda d: [d[0].pk, d[2].pk], lambda d: [d[1].pk, d[1].pk, None], lambda d: [], lambda d: [10**12]],
)
def test_the_same_rows_as_in(devices, pick):
    _, made = devices
    ids = pick(made)
    expected = set(Device.objects.filter(pk__in=ids).values_list("pk", flat=True))
    assert set(Device.objects.filter(pk__any_of=ids).values_list("pk", flat=True)) == expected


def test_a_foreign_key_by_id_and_an_update(devices):
    p, made = devices
    action = action_create(actor=p.operator, fleet=p.fleet, kind="restart", scope="fleet")
    action_expand(action.pk)
    rows = ActionDelivery.objects.filter(action=action, device_id__any_of=[made[0].pk, made[3].pk])
    assert rows.update(reason="picked") == 2
    assert sorted(ActionDelivery.objects.filter(reason="picked").values_list("device_id", flat=True)) == [
        made[0].pk,
        made[3].pk,
    ]


def test_on_postgresql_thousands_of_ids_are_one_parameter(devices):
    if connection.vendor != "postgresql":
        pytest.skip("IN elsewhere")
    _, made = devices
    queryset = Device.objects.filter(pk__any_of=[made[1].pk, *range(10**9, 10**9 + 5000)])
    sql, params = queryset.values_list("pk").query.sql_with_params()
    assert "= ANY(%s::bigint[])" in sql and len(params) == 1 and len(params[0]) == 5001
    assert list(queryset.values_list("pk", flat=True)) == [made[1].pk]
