"""Where data rests: EEA membership, provider regions -> country, refused services.

Tenant data may only rest in the EEA (the 27 EU states plus Iceland, Liechtenstein and
Norway). Switzerland and the United Kingdom have adequacy decisions but are not EEA, and
the privacy statement promises EEA, so they are refused like any other third country.

A region name alone is ambiguous: Wasabi's ``eu-west-1`` is London while AWS's is Ireland,
IONOS's ``eu-central-2`` is Berlin while AWS's is Zurich. So regions are looked up per
provider, the provider being recognised by the endpoint host.
"""

from __future__ import annotations

import re
from typing import NamedTuple

EU = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
})
EEA = EU | frozenset({"IS", "LI", "NO"})


class Region(NamedTuple):
    provider: str
    name: str
    country: str  # ISO 3166-1 alpha-2
    place: str


def is_eea(country: str | None) -> bool:
    """True when the ISO 3166-1 alpha-2 code is an EEA member state."""
    return isinstance(country, str) and country.strip().upper() in EEA


def _table(spec: str) -> dict[str, tuple[str, str]]:
    """Parse 'region COUNTRY place' lines: a table that reads like the providers' docs."""
    table = {}
    for line in spec.strip().splitlines():
        name, country, place = line.split(maxsplit=2)
        table[name] = (country, place)
    return table


AWS_REGIONS = _table("""
    us-east-1 US N. Virginia
    us-east-2 US Ohio
    us-west-1 US N. California
    us-west-2 US Oregon
    us-gov-east-1 US GovCloud (US-East)
    us-gov-west-1 US GovCloud (US-West)
    ca-central-1 CA Montreal
    ca-west-1 CA Calgary
    mx-central-1 MX Querétaro
    sa-east-1 BR São Paulo
    af-south-1 ZA Cape Town
    me-south-1 BH Bahrain
    me-central-1 AE United Arab Emirates
    il-central-1 IL Tel Aviv
    ap-east-1 HK Hong Kong
    ap-east-2 TW Taipei
    ap-south-1 IN Mumbai
    ap-south-2 IN Hyderabad
    ap-southeast-1 SG Singapore
    ap-southeast-2 AU Sydney
    ap-southeast-3 ID Jakarta
    ap-southeast-4 AU Melbourne
    ap-southeast-5 MY Malaysia
    ap-southeast-7 TH Thailand
    ap-northeast-1 JP Tokyo
    ap-northeast-2 KR Seoul
    ap-northeast-3 JP Osaka
    cn-north-1 CN Beijing
    cn-northwest-1 CN Ningxia
    eu-central-1 DE Frankfurt
    eu-central-2 CH Zurich
    eu-west-1 IE Ireland
    eu-west-2 GB London
    eu-west-3 FR Paris
    eu-south-1 IT Milan
    eu-south-2 ES Spain
    eu-north-1 SE Stockholm
    eusc-de-east-1 DE Brandenburg (European Sovereign Cloud)
""")

WASABI_REGIONS = _table("""
    us-east-1 US N. Virginia
    us-east-2 US N. Virginia
    us-central-1 US Texas
    us-west-1 US Oregon
    us-west-2 US San Jose
    ca-central-1 CA Toronto
    eu-central-1 NL Amsterdam
    eu-central-2 DE Frankfurt
    eu-west-1 GB London
    eu-west-2 FR Paris
    eu-west-3 GB London
    eu-south-1 IT Milan
    ap-northeast-1 JP Tokyo
    ap-northeast-2 JP Osaka
    ap-southeast-1 SG Singapore
    ap-southeast-2 AU Sydney
""")

BACKBLAZE_REGIONS = _table("""
    us-west-001 US Sacramento
    us-west-002 US Sacramento
    us-west-004 US Phoenix
    us-east-005 US Reston
    eu-central-003 NL Amsterdam
    ca-east-006 CA Toronto
""")

SCALEWAY_REGIONS = _table("""
    fr-par FR Paris
    nl-ams NL Amsterdam
    pl-waw PL Warsaw
    it-mil IT Milan
""")

OVH_REGIONS = _table("""
    gra FR Gravelines
    sbg FR Strasbourg
    rbx FR Roubaix
    eu-west-par FR Paris
    de DE Frankfurt
    waw PL Warsaw
    eu-south-mil IT Milan
    uk GB London
    bhs CA Beauharnois
    ca-east-tor CA Toronto
    us-east-va US Vint Hill
    us-west-or US Hillsboro
    ap-southeast-sgp SG Singapore
    ap-southeast-syd AU Sydney
    ap-south-mum IN Mumbai
""")

HETZNER_REGIONS = _table("""
    fsn1 DE Falkenstein
    nbg1 DE Nuremberg
    hel1 FI Helsinki
""")

EXOSCALE_REGIONS = _table("""
    ch-gva-2 CH Geneva
    ch-dk-2 CH Zurich
    de-fra-1 DE Frankfurt
    de-muc-1 DE Munich
    at-vie-1 AT Vienna
    at-vie-2 AT Vienna
    bg-sof-1 BG Sofia
""")

IONOS_REGIONS = _table("""
    de DE Frankfurt
    eu-central-1 DE Frankfurt
    eu-central-2 DE Berlin
    eu-central-3 DE Berlin
    eu-south-2 ES Logroño
""")

DIGITALOCEAN_REGIONS = _table("""
    nyc3 US New York
    sfo2 US San Francisco
    sfo3 US San Francisco
    atl1 US Atlanta
    tor1 CA Toronto
    ams3 NL Amsterdam
    fra1 DE Frankfurt
    lon1 GB London
    sgp1 SG Singapore
    syd1 AU Sydney
    blr1 IN Bangalore
""")

GCS_REGIONS = _table("""
    europe-west1 BE St. Ghislain
    europe-west2 GB London
    europe-west3 DE Frankfurt
    europe-west4 NL Eemshaven
    europe-west6 CH Zurich
    europe-west8 IT Milan
    europe-west9 FR Paris
    europe-west10 DE Berlin
    europe-west12 IT Turin
    europe-north1 FI Hamina
    europe-north2 SE Stockholm
    europe-central2 PL Warsaw
    europe-southwest1 ES Madrid
    us US United States (multi-region)
    nam4 US Iowa and South Carolina (dual-region)
    us-central1 US Iowa
    us-east1 US South Carolina
    us-east4 US N. Virginia
    us-east5 US Columbus
    us-south1 US Dallas
    us-west1 US Oregon
    us-west2 US Los Angeles
    us-west3 US Salt Lake City
    us-west4 US Las Vegas
    northamerica-northeast1 CA Montréal
    northamerica-northeast2 CA Toronto
    southamerica-east1 BR São Paulo
    asia-east1 TW Taiwan
    asia-east2 HK Hong Kong
    asia-northeast1 JP Tokyo
    asia-northeast2 JP Osaka
    asia-northeast3 KR Seoul
    asia-south1 IN Mumbai
    asia-southeast1 SG Singapore
    australia-southeast1 AU Sydney
    me-west1 IL Tel Aviv
    me-central1 QA Doha
    me-central2 SA Dammam
    africa-south1 ZA Johannesburg
""")

# Provider name, endpoint host suffixes, region table. The EU multi-region of GCS and
# similar multi-country locations are deliberately absent: no single country, so only
# destination.country decides.
PROVIDERS: tuple[tuple[str, tuple[str, ...], dict[str, tuple[str, str]]], ...] = (
    ("AWS", ("amazonaws.com", "amazonaws.com.cn", "amazonaws.eu"), AWS_REGIONS),
    ("Wasabi", ("wasabisys.com",), WASABI_REGIONS),
    ("Backblaze B2", ("backblazeb2.com",), BACKBLAZE_REGIONS),
    ("Scaleway", ("scw.cloud",), SCALEWAY_REGIONS),
    ("OVHcloud", ("cloud.ovh.net", "cloud.ovh.us"), OVH_REGIONS),
    ("Hetzner", ("your-objectstorage.com",), HETZNER_REGIONS),
    ("Exoscale", ("exo.io",), EXOSCALE_REGIONS),
    ("IONOS", ("ionoscloud.com",), IONOS_REGIONS),
    ("DigitalOcean", ("digitaloceanspaces.com",), DIGITALOCEAN_REGIONS),
    ("Google Cloud Storage", ("googleapis.com",), GCS_REGIONS),
)

# Services the privacy statement names as not used, recognised by endpoint host.
REFUSED_SERVICES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Microsoft Azure", re.compile(
        r"(^|\.)(windows\.net|azure\.com|azure\.net|azure\.us|azure\.cn|azurefd\.net"
        r"|azureedge\.net|chinacloudapi\.cn)$")),
    ("Apple iCloud", re.compile(r"(^|\.)(icloud\.com|icloud-content\.com|apple\.com|me\.com)$")),
    # IDrive and IDrive e2 use numbered hosts such as idrivee2-12.com.
    ("IDrive", re.compile(r"(^|\.)idrive[a-z0-9-]*\.(com|io|net)$")),
)

AWS_LIKE_REGION = re.compile(r"^(us|eu|eusc|ap|sa|ca|me|af|il|mx|cn)(-gov)?-[a-z]+-\d+$")


def _normal_host(host: str | None) -> str:
    return (host or "").strip().rstrip(".").lower()


def provider_of(endpoint_host: str | None) -> str | None:
    """The known provider serving this endpoint host, or None (self-hosted, unknown)."""
    known = _provider_of(_normal_host(endpoint_host))
    return known[0] if known else None


def _provider_of(host: str) -> tuple[str, dict[str, tuple[str, str]]] | None:
    for provider, suffixes, table in PROVIDERS:
        if any(host == s or host.endswith("." + s) for s in suffixes):
            return provider, table
    return None


def region_info(endpoint_host: str | None, region: str | None) -> Region | None:
    """The place behind a region name at this endpoint, or None when it is not known.

    An endpoint that is no known provider (self-hosted MinIO, loopback) tells nothing, but
    a region written like an AWS region is read at AWS's meaning: S3 clients and people
    both take ``eu-west-2`` to be London.
    """
    if not isinstance(region, str) or not region.strip():
        return None
    name = region.strip().lower()
    known = _provider_of(_normal_host(endpoint_host))
    if known is not None:
        provider, table = known
        if name in table:
            return Region(provider, name, *table[name])
        if provider != "AWS":
            return None
    return _aws_reading(name)


def _aws_reading(name: str) -> Region | None:
    if name in AWS_REGIONS:
        return Region("AWS", name, *AWS_REGIONS[name])
    if AWS_LIKE_REGION.match(name) and name.startswith(("us-", "cn-")):
        # A new US or China region is still in the US or China.
        country = "US" if name.startswith("us-") else "CN"
        return Region("AWS", name, country, "unlisted region")
    return None


def country_of_region(endpoint_host: str | None, region: str | None) -> str | None:
    """ISO country of a region at this endpoint; None when unknown (then `country` decides)."""
    info = region_info(endpoint_host, region)
    return info.country if info else None


def endpoint_region(endpoint_host: str | None) -> Region | None:
    """The region a known provider's endpoint host names (s3.eu-west-2.amazonaws.com).

    The host decides where the bucket is reached, whatever the region key says, so it is
    checked too.
    """
    host = _normal_host(endpoint_host)
    known = _provider_of(host)
    if known is None:
        return None
    provider, table = known
    # Right to left: the region sits next to the provider's domain, a bucket name in a
    # virtual-hosted name sits further left and must not be read as a region.
    for label in reversed(host.split(".")):
        for candidate in (label, label.removeprefix("s3-"), label.removeprefix("sos-")):
            if candidate in table:
                return Region(provider, candidate, *table[candidate])
    return None


def refused_service(endpoint_host: str | None) -> str | None:
    """The name of a storage service the privacy statement says is not used, or None."""
    host = _normal_host(endpoint_host)
    for service, pattern in REFUSED_SERVICES:
        if host and pattern.search(host):
            return service
    return None
