"""The running service keeps start-up objects out of the collector's full passes."""

import gc

from hotline.app import create_app
from hotline.gc_tuning import YOUNG_THRESHOLD
from tests.conftest import make_settings


async def test_start_up_objects_are_frozen_and_thresholds_restored_on_cleanup(
    aiohttp_client, sqlite_url, tmp_path
):
    before_threshold = gc.get_threshold()
    gc.unfreeze()
    app = create_app(make_settings(tmp_path, sqlite_url, gc_freeze=True), watch_deadlines=False)
    client = await aiohttp_client(app)
    # the app's own start-up (modules, routes, statements, taxonomy) is frozen
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    # a full collection no longer walks what start-up built
    tracked_outside_freeze = len(gc.get_objects())
    assert tracked_outside_freeze < gc.get_freeze_count()
    assert (await client.get("/healthz")).status == 200
    await client.close()
    assert gc.get_threshold() == before_threshold
    assert gc.get_freeze_count() == 0


async def test_gc_freeze_off_leaves_the_collector_alone(aiohttp_client, sqlite_url, tmp_path):
    before_threshold = gc.get_threshold()
    gc.unfreeze()
    app = create_app(make_settings(tmp_path, sqlite_url, gc_freeze=False), watch_deadlines=False)
    client = await aiohttp_client(app)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before_threshold
    await client.close()
