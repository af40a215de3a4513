"""run_per_tenant: one tenant's surprise never ends the other tenants' night."""

from types import SimpleNamespace

import pytest

from bkp.context import Outcome, highest_exit, run_per_tenant


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_unexpected_error_fails_one_tenant_and_the_others_still_run(jobs):
    tenants = [SimpleNamespace(tenant=t) for t in ("a", "boom", "c")]
    ran = []

    def work(policy):
        ran.append(policy.tenant)
        if policy.tenant == "boom":
            raise PermissionError("denied by the filesystem")
        return Outcome(policy.tenant, 0, {"tenant": policy.tenant, "status": "ok"})

    outcomes = run_per_tenant(tenants, work, jobs)
    assert sorted(ran) == ["a", "boom", "c"]
    assert [o.data["status"] for o in outcomes] == ["ok", "failed", "ok"]
    assert "PermissionError" in outcomes[1].data["error"]
    assert highest_exit(outcomes) == 1
