"""The load generator against a world of its own (every set in one `atlantic serve` process,
chDB in a directory of its own): its audit passes, so every order it placed ended where its plan
said and analytics agrees with PostgreSQL."""

from support import TEST_PASSWORD, unique_email, world_of_its_own

from runtime.tools.loadgen import LoadConfig, run_loadgen

ALL_SETS = ["users", "catalog", "orders", "payments", "analytics"]


async def test_loadgen_audit_passes_against_a_running_system(settings):
    base = settings.model_copy(update={"admin_email": unique_email("loadgen-admin"),
                                       "admin_password": TEST_PASSWORD})
    async with world_of_its_own(base, "loadgen") as world:
        await world.serve(ALL_SETS)
        # Stops at 30 orders however slow the machine: a time limit placed fewer on a busy one.
        config = LoadConfig(nats_url=world.settings.nats_url, admin_email=base.admin_email,
                            admin_password=TEST_PASSWORD, concurrency=8, orders=30,
                            duration=None, shoppers=6, products=6, seed=7, settle_seconds=30)

        report = await run_loadgen(config)

    assert report.passed, report.problems
    assert len(report.orders) == 30
    assert {o.status for o in report.orders.values()} <= {"DELIVERED", "CANCELLED", "RETURNED"}
