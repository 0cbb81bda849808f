"""The admin API: every route needs the admin credential (401 without a key, 403 with a
tenant's key); a tenant signed in to the console may also read its own adapters."""

from fastapi import APIRouter

from . import (
    activity_router,
    adapters_router,
    rollouts_router,
    sessions_router,
    tenants_router,
    training_router,
    transfers_router,
)

router = APIRouter()
router.include_router(tenants_router.router)
router.include_router(adapters_router.router)
router.include_router(training_router.router)
router.include_router(activity_router.router)
router.include_router(rollouts_router.router)
router.include_router(transfers_router.router)
router.include_router(sessions_router.router)
