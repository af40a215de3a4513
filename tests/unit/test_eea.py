"""EEA membership, provider regions and refused services."""

from __future__ import annotations

import pytest

from bkp import eea


@pytest.mark.parametrize("country", ["NL", "DE", "FR", "IE", "GR", "SE", "IS", "LI", "NO", "nl"])
def test_eea_members_are_accepted(country):
    assert eea.is_eea(country)


@pytest.mark.parametrize("country", ["CH", "GB", "US", "UK", "EL", "", None, 31])
def test_non_members_are_not_eea(country):
    assert not eea.is_eea(country)


def test_eea_is_the_eu_plus_iceland_liechtenstein_norway():
    assert len(eea.EU) == 27
    assert sorted(eea.EEA - eea.EU) == ["IS", "LI", "NO"]


@pytest.mark.parametrize(("host", "region", "country"), [
    ("s3.eu-west-1.amazonaws.com", "eu-west-1", "IE"),
    ("s3.eu-west-2.amazonaws.com", "eu-west-2", "GB"),
    ("s3.eu-west-3.amazonaws.com", "eu-west-3", "FR"),
    ("s3.eu-central-1.amazonaws.com", "eu-central-1", "DE"),
    ("s3.eu-central-2.amazonaws.com", "eu-central-2", "CH"),
    ("s3.eu-north-1.amazonaws.com", "eu-north-1", "SE"),
    ("s3.eu-south-1.amazonaws.com", "eu-south-1", "IT"),
    ("s3.eu-south-2.amazonaws.com", "eu-south-2", "ES"),
    ("s3.amazonaws.com", "us-east-1", "US"),
    ("s3.amazonaws.com", "us-west-9", "US"),  # a future US region is still the US
    ("s3.eu-central-1.wasabisys.com", "eu-central-1", "NL"),
    ("s3.eu-west-1.wasabisys.com", "eu-west-1", "GB"),  # Wasabi's eu-west-1 is London
    ("s3.eu-central-003.backblazeb2.com", "eu-central-003", "NL"),
    ("s3.fr-par.scw.cloud", "fr-par", "FR"),
    ("s3.nl-ams.scw.cloud", "nl-ams", "NL"),
    ("s3.pl-waw.scw.cloud", "pl-waw", "PL"),
    ("s3.gra.io.cloud.ovh.net", "gra", "FR"),
    ("s3.sbg.io.cloud.ovh.net", "SBG", "FR"),
    ("s3.rbx.io.cloud.ovh.net", "rbx", "FR"),
    ("s3.de.io.cloud.ovh.net", "de", "DE"),
    ("s3.waw.io.cloud.ovh.net", "waw", "PL"),
    ("s3.uk.io.cloud.ovh.net", "uk", "GB"),
    ("s3.bhs.io.cloud.ovh.net", "bhs", "CA"),
    ("fsn1.your-objectstorage.com", "fsn1", "DE"),
    ("nbg1.your-objectstorage.com", "nbg1", "DE"),
    ("hel1.your-objectstorage.com", "hel1", "FI"),
    ("sos-ch-gva-2.exo.io", "ch-gva-2", "CH"),
    ("sos-de-fra-1.exo.io", "de-fra-1", "DE"),
    ("s3-eu-central-2.ionoscloud.com", "eu-central-2", "DE"),  # Berlin, not Zurich
    ("ams3.digitaloceanspaces.com", "ams3", "NL"),
    ("fra1.digitaloceanspaces.com", "fra1", "DE"),
    ("lon1.digitaloceanspaces.com", "lon1", "GB"),
    ("storage.googleapis.com", "europe-west4", "NL"),
    ("storage.googleapis.com", "europe-west2", "GB"),
    ("storage.googleapis.com", "EUROPE-WEST6", "CH"),
])
def test_known_provider_regions_name_their_country(host, region, country):
    assert eea.country_of_region(host, region) == country


@pytest.mark.parametrize(("host", "region", "country"), [
    ("minio.internal.example.nl", "eu-west-2", "GB"),
    ("127.0.0.1", "eu-central-2", "CH"),
    ("localhost", "eu-central-1", "DE"),
    ("minio.internal.example.nl", "us-east-1", "US"),
    (None, "eu-west-1", "IE"),
])
def test_unknown_endpoints_read_aws_like_regions_at_aws_meaning(host, region, country):
    assert eea.country_of_region(host, region) == country


@pytest.mark.parametrize(("host", "region"), [
    ("minio.internal.example.nl", "nl-ams"),  # not an AWS name: only `country` decides
    ("minio.internal.example.nl", "garage"),
    ("s3.example.eu", ""),
    ("s3.example.eu", None),
    ("storage.googleapis.com", "eu"),  # multi-region: no single country
    ("fsn1.your-objectstorage.com", "eu-west-2"),  # Hetzner has no such region
])
def test_unknown_regions_have_no_country(host, region):
    assert eea.country_of_region(host, region) is None


def test_region_info_names_the_place():
    info = eea.region_info("s3.eu-west-2.amazonaws.com", "eu-west-2")
    assert info == eea.Region("AWS", "eu-west-2", "GB", "London")


@pytest.mark.parametrize(("host", "country"), [
    ("s3.eu-west-2.amazonaws.com", "GB"),
    ("s3-eu-west-1.amazonaws.com", "IE"),
    ("s3.dualstack.eu-central-2.amazonaws.com", "CH"),
    ("fsn1.your-objectstorage.com", "DE"),
    ("sos-ch-gva-2.exo.io", "CH"),
    ("s3.eu-central-003.backblazeb2.com", "NL"),
    ("uk.s3.gra.io.cloud.ovh.net", "FR"),  # a bucket called "uk" is not the region
])
def test_endpoint_hosts_of_known_providers_name_their_region(host, country):
    region = eea.endpoint_region(host)
    assert region is not None
    assert region.country == country


@pytest.mark.parametrize("host", ["s3.amazonaws.com", "storage.googleapis.com",
                                  "minio.example.nl", "127.0.0.1", None])
def test_endpoint_hosts_without_a_region(host):
    assert eea.endpoint_region(host) is None


def test_provider_of_recognises_hosts():
    assert eea.provider_of("S3.EU-CENTRAL-1.AMAZONAWS.COM.") == "AWS"
    assert eea.provider_of("s3.nl-ams.scw.cloud") == "Scaleway"
    assert eea.provider_of("notamazonaws.com") is None
    assert eea.provider_of("minio.example.nl") is None


@pytest.mark.parametrize(("host", "service"), [
    ("acme.blob.core.windows.net", "Microsoft Azure"),
    ("acme.dfs.core.windows.net", "Microsoft Azure"),
    ("storage.azure.com", "Microsoft Azure"),
    ("ACME.BLOB.CORE.WINDOWS.NET", "Microsoft Azure"),
    ("p01-content.icloud.com", "Apple iCloud"),
    ("cvws.icloud-content.com", "Apple iCloud"),
    ("www.apple.com", "Apple iCloud"),
    ("www.idrive.com", "IDrive"),
    ("s3.idrivee2.com", "IDrive"),
    ("x7k2.ldn.idrivee2-12.com", "IDrive"),
])
def test_refused_services_are_named(host, service):
    assert eea.refused_service(host) == service


@pytest.mark.parametrize("host", ["s3.nl-ams.scw.cloud", "s3.eu-central-1.amazonaws.com",
                                  "notazure.com", "myidrive.example.nl", "windows.net.example.nl",
                                  "", None])
def test_other_services_are_not_refused(host):
    assert eea.refused_service(host) is None
