"""gRPC server reflection on a development hub (hub.reflection): grpcurl-style tools list and describe the services."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from broker.dev.testing import LocalHub, local_hub
from tests import factories as f
from tests.integration.conftest import AGENCIES, ALLOW

pytestmark = pytest.mark.integration


def services(hub: LocalHub) -> tuple[list[str], list[str]]:
    """The services the hub names over reflection, and HubService's methods (as an agency's client)."""
    pair = hub.pki.agency(f.PL)
    creds = grpc.ssl_channel_credentials(hub.pki.ca.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())
    with grpc.secure_channel(hub.target, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        names = sorted(database.get_services())
        hub_service = database.FindFileContainingSymbol("opsroom.hub.v1.HubService")
        methods = [m.name for s in hub_service.service if s.name == "HubService" for m in s.method]
    return names, methods


async def test_a_development_hub_answers_reflection(tmp_path: Path) -> None:
    async with local_hub(tmp_path, AGENCIES, ALLOW, reflection=True) as hub:
        names, methods = await asyncio.to_thread(services, hub)
    assert "opsroom.hub.v1.HubService" in names
    assert "grpc.health.v1.Health" in names
    assert {"Publish", "PublishStream", "Connect", "GetReceipt"} <= set(methods)


async def test_reflection_is_off_unless_configured(hub: LocalHub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(services, hub)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
