"""`simulate_devices --fleet` after the fleets changed under it: the demo passes acme/gateways=10 on
every start, and once that fleet is transferred to Globex the simulator must still start."""

import io
import secrets

import pytest
from django.core.management.base import CommandError

from devices.keys import hash_secret
from devices.management.commands.simulate_devices import Command
from devices.simulator import Simulator
from fleets import services
from fleets.models import FleetRole, Organization, ProvisioningKey
from tests.factories import make_fleet, make_org_admin

pytestmark = pytest.mark.django_db

SPECS = ["acme/kiosks=3", "acme/gateways=2"]


@pytest.fixture
def demo():
    """Acme's kiosks and gateways, and Globex's empty gateways with admin a Developer of it."""
    acme = Organization.objects.create(name="Acme", handle="acme")
    globex = Organization.objects.create(name="Globex", handle="globex")
    kiosks = make_fleet(acme, "kiosks")
    gateways = make_fleet(acme, "gateways", fleet_type="essentials", device_type="intel-nuc")
    placeholder = make_fleet(globex, "gateways", fleet_type="essentials", device_type="intel-nuc")
    admin = make_org_admin(acme, "admin")
    services.fleet_member_add(
        actor=make_org_admin(globex, "outsider"),
        fleet=placeholder,
        username="admin",
        role=FleetRole.DEVELOPER,
    )
    return {"acme": acme, "globex": globex, "kiosks": kiosks, "gateways": gateways, "admin": admin}


def simulator_with_devices_in(*fleets) -> Simulator:
    """A simulator that resumed devices of these fleets from its state file."""
    sim = Simulator("http://127.0.0.1:1")
    for fleet in fleets:
        sim.add_device(
            device_type=fleet.default_device_type.slug, os_version="2.58.3", agent_version="1.4.0",
            api_key=secrets.token_hex(16), push_secret=secrets.token_hex(16), fleet_id=fleet.pk,
        )  # fmt: skip
    return sim


def create(sim, specs, n=5):
    command = Command(stdout=io.StringIO())
    options = {"seed": 1, "provisioning_key": None, "device_type": None, "fleet": specs}
    command.create_devices(sim, n, options)
    new = [d for d in sim.devices.values() if d.provisioning_key]
    fleets = [ProvisioningKey.objects.get(key_hash=hash_secret(d.provisioning_key)).fleet_id for d in new]
    return command.stdout.getvalue(), fleets


def test_after_a_transfer_new_devices_follow_the_fleet_to_its_new_organization(demo):
    services.fleet_transfer(actor=demo["admin"], fleet=demo["gateways"], organization=demo["globex"])
    sim = simulator_with_devices_in(demo["kiosks"], demo["gateways"])
    output, fleets = create(sim, SPECS)
    assert (
        f"--fleet acme/gateways: no such fleet now; following its devices to globex/gateways "
        f"({demo['gateways'].pk}), where it is now (transferred?)"
    ) in output
    assert sorted(fleets) == sorted([demo["kiosks"].pk] * 3 + [demo["gateways"].pk] * 2)


def test_a_fleet_gone_for_good_is_skipped_with_a_warning(demo):
    gone = demo["gateways"]
    sim = simulator_with_devices_in(demo["kiosks"], gone)
    services.fleet_delete(actor=demo["admin"], fleet=gone)
    output, fleets = create(sim, SPECS)
    assert "--fleet acme/gateways: no such fleet now (transferred, renamed or deleted?); skipped" in output
    assert fleets == [demo["kiosks"].pk] * 5


def test_without_devices_in_the_state_file_an_unknown_fleet_is_still_a_mistake(demo):
    with pytest.raises(CommandError, match="No fleet with id or name 'acme/gatewys'"):
        create(Simulator("http://127.0.0.1:1"), ["acme/kiosks=3", "acme/gatewys=2"])
    assert not ProvisioningKey.objects.exists()
