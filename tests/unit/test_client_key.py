"""Whom the per-client limits and the admin lockout count (signup.limits.client_key)."""

import pytest
from django.test import RequestFactory

from signup.limits import admin_client_ip, client_key


@pytest.mark.parametrize(
    ("remote", "counted_as"),
    [
        ("192.0.2.1", "192.0.2.1"),
        # Every address of a /64 is one client.
        ("2001:db8:1:2::1", "2001:db8:1:2::"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"),
        ("2001:db8:1:3::1", "2001:db8:1:3::"),
        ("fe80::1%eth0", "fe80::"),
        # IPv6 addresses that carry an IPv4 client's: that client, not everyone behind the
        # translator or relay.
        ("::ffff:192.0.2.9", "192.0.2.9"),
        ("64:ff9b::c000:209", "192.0.2.9"),  # NAT64
        ("2002:c000:209::1", "192.0.2.9"),  # 6to4
        ("2001:0:4136:e378:8000:63bf:3fff:fdf6", "192.0.2.9"),  # Teredo (obfuscated client)
        # No address at all (a Unix socket): one client, and none for django-axes.
        ("", "unknown"),
        ("not-an-address", "unknown"),
    ],
)
def test_clients_are_counted_by_address_and_ipv6_ones_by_their_64(remote, counted_as):
    request = RequestFactory().get("/", REMOTE_ADDR=remote)
    assert client_key(request) == counted_as
    assert admin_client_ip(request) == (None if counted_as == "unknown" else counted_as)
