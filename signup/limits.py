"""Rate limits for the public entry points, counted per client address or API key.

Counters live in Django's cache (Redis in production, so that every web process counts
together), in fixed windows the way Django's cache-based throttles count: one key per
(scope, who, window), added with the window's timeout and incremented. Over the limit, the
caller answers 429 with Retry-After; the limits themselves are settings.
"""

import hashlib
import ipaddress
import math
import re
import time
from dataclasses import dataclass
from functools import wraps

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.http import HttpRequest, JsonResponse
from django.shortcuts import render
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.translation import gettext as _

from signup import remotes

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
RATE_PATTERN = re.compile(r"\A\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*\Z")


@dataclass(frozen=True)
class Rate:
    """At most `limit` hits per `seconds`."""

    limit: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> "Rate":
        """Read "20/m", "6000/m", "5/10m", "100/h" or "5/d"."""
        match = RATE_PATTERN.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a rate like 20/m")
        count, multiple, unit = match.groups()
        return cls(int(count), int(multiple or 1) * _PERIODS[unit])


def client_ip(request: HttpRequest) -> str:
    """Return the client's address: REMOTE_ADDR, or with SIGNUP_TRUSTED_PROXIES proxies in
    front, the address the outermost of them saw (X-Forwarded-For, counted from the right, so
    that a client can't choose its own by sending the header)."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.SIGNUP_TRUSTED_PROXIES
    if proxies <= 0:
        return remote
    forwarded = [
        hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop
    ]
    if not forwarded:
        return remote
    candidate = forwarded[-min(proxies, len(forwarded))]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote


# IPv6 addresses that carry an IPv4 client's address: NAT64's well-known prefix (RFC 6052).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def client_key(request: HttpRequest) -> str:
    """Return whom the per-client limits count: the client's IPv4 address, or for an IPv6
    one the first address of its /64 network. A /64 is the least an ISP or a host usually
    gives one customer, who can pick any address in it: counting addresses would let it
    multiply its limit without end. An IPv6 address that carries an IPv4 one (mapped,
    NAT64, 6to4, Teredo) counts as that IPv4 client. A REMOTE_ADDR that is no address
    (a Unix socket's) counts as one client, "unknown"."""
    return network_of(client_ip(request))


def network_of(address: str) -> str:
    """The network client_key counts an address in (see there)."""
    ip = _ip(address)
    if ip is None:
        return "unknown"
    if ip.version == 4:
        return str(ip)
    if carried := _carried_ipv4(ip):
        return str(carried)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False).network_address)


def client_network(request: HttpRequest) -> str:
    """What a signup records of where it came from: a keyed digest of its client's network
    (client_key), so that the address budget can count per network without keeping the
    client's address."""
    return network_digest(client_key(request))


def network_digest(network: str) -> str:
    return salted_hmac("signup.limits.network", network, algorithm="sha256").hexdigest()[:32]


def admin_client_ip(request: HttpRequest) -> str | None:
    """The address django-axes records a login attempt under and locks out: client_key's,
    or None when the client has no address (axes stores it in an address column)."""
    key = client_key(request)
    return None if key == "unknown" else key


def is_ip_address(address: str) -> bool:
    return _ip(address) is not None


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # (server, client)
    return None


def hit(scope: str, who: str, rate: Rate) -> int:
    """Count one hit of `who` on `scope`; return 0 if it is within `rate`, else the seconds
    until the window ends (the Retry-After).

    The limits fail open: a cache that does not answer (the broker's Redis, on a host this
    one is cut off from) lets the request through, so that signups are still recorded (and
    greeted by the sweeper). What protects the mailboxes, the address budget and cooldown,
    lives in the database and still holds."""
    count = remotes.cache.call(_incr, _key(scope, who, rate), rate, default=0)
    return 0 if count <= rate.limit else _retry_after(rate)


def exceeded(scope: str, who: str, rate: Rate) -> int:
    """Like hit() without counting: the seconds to wait if `who` is already over `rate`."""
    count = remotes.cache.call(cache.get, _key(scope, who, rate), 0, default=0)
    return 0 if count < rate.limit else _retry_after(rate)


def _key(scope: str, who: str, rate: Rate) -> str:
    # Digested: neither an address nor an API key ends up in the cache's keys.
    digest = hashlib.sha256(who.encode()).hexdigest()[:32]
    return f"signup:rate:{scope}:{digest}:{int(time.time() // rate.seconds)}"


def _incr(key: str, rate: Rate) -> int:
    ttl = rate.seconds + 1
    backend = caches["default"]
    if isinstance(backend, RedisCache):
        # One round trip instead of the API's three (add, then incr's exists and incr): every
        # form post and API call pays it. The key names its window, so renewing its expiry on
        # each hit only keeps it a little longer than the window.
        full_key = backend.make_and_validate_key(key)
        client = backend._cache.get_client(full_key, write=True)
        count, _ = client.pipeline(transaction=False).incr(full_key).expire(full_key, ttl).execute()
        return count
    cache.add(key, 0, timeout=ttl)
    try:
        return cache.incr(key)
    except ValueError:  # the window ended between add and incr
        cache.set(key, 1, timeout=ttl)
        return 1


def _retry_after(rate: Rate) -> int:
    return max(1, math.ceil(rate.seconds - time.time() % rate.seconds))


# --- Answering 429 ------------------------------------------------------------------------


def too_many_page(request: HttpRequest, retry_after: int):
    response = render(
        request,
        "signup/too_many.html",
        {"minutes": max(1, math.ceil(retry_after / 60))},
        status=429,
    )
    response["Retry-After"] = str(retry_after)
    return response


def too_many_json(retry_after: int) -> JsonResponse:
    response = JsonResponse(
        {"message": _("Too many requests: try again in %(seconds)d s.") % {"seconds": retry_after}},
        status=429,
    )
    response["Retry-After"] = str(retry_after)
    return response


def limit_posts_per_client(scope: str):
    """Limit a page's POSTs to SIGNUP_RATE_LIMIT_PAGES per client address; GETs are free."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method == "POST":
                rate = Rate.parse(settings.SIGNUP_RATE_LIMIT_PAGES)
                retry_after = hit(scope, client_key(request), rate)
                if retry_after:
                    return too_many_page(request, retry_after)
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def bad_links_exceeded(request: HttpRequest) -> int:
    """Seconds this client must wait before trying another link, after too many invalid
    ones (SIGNUP_RATE_LIMIT_BAD_LINKS); 0 if it may."""
    return exceeded(
        "bad-link", client_key(request), Rate.parse(settings.SIGNUP_RATE_LIMIT_BAD_LINKS)
    )


def count_bad_link(request: HttpRequest) -> None:
    hit("bad-link", client_key(request), Rate.parse(settings.SIGNUP_RATE_LIMIT_BAD_LINKS))


def check_bearer(request: HttpRequest, secret: str) -> tuple[int, int]:
    """Check `Authorization: Bearer <secret>` in constant time; return (0, 0) when it is
    right, else the status to answer: (401, 0) without one, (403, 0) for a wrong one, which
    is counted as a bad guess of this client, and (429, Retry-After) once the client is past
    SIGNUP_RATE_LIMIT_BAD_LINKS of those. The right one is never held back."""
    scheme, _space, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, 0
    if constant_time_compare(given.strip(), secret):
        return 0, 0
    return refuse_bad_credentials(request)


def refuse_bad_credentials(request: HttpRequest) -> tuple[int, int]:
    """Count wrong credentials from this client: (403, 0), or (429, Retry-After) once it is past
    SIGNUP_RATE_LIMIT_BAD_LINKS (which it then waits out)."""
    retry_after = bad_links_exceeded(request)
    if retry_after:
        return 429, retry_after
    count_bad_link(request)
    return 403, 0


def admin_lockout(request, original_response=None, credentials=None):
    """django-axes' answer to a locked-out admin login: the friendly 429 page."""
    return too_many_page(request, int(settings.AXES_COOLOFF_TIME.total_seconds()))
