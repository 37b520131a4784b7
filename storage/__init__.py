"""Quotas, rate limits, jobs and admin operations, persisted with SQLAlchemy (SQLite by default).

Knows no chat platform and no torch: users are `UserRef(platform, id)` and chat references are
opaque JSON the adapters store with each job.
"""

from storage.admin import UserQuota, parse_quota
from storage.clock import Clock, utc_now
from storage.engine import create_engine
from storage.errors import (
    AdminInputError,
    InvalidQuotaError,
    InvalidRefError,
    StorageError,
    UnknownUserError,
)
from storage.migrate import upgrade
from storage.records import (
    Admitted,
    Allowance,
    AuditEntry,
    Decision,
    DenialReason,
    Denied,
    GroupRef,
    JobRecord,
    JobStatus,
    NewJob,
    PeriodStats,
    QuotaStatus,
    TopUser,
    UsageStats,
    UserRef,
)
from storage.store import Store

__all__ = [
    "AdminInputError",
    "Admitted",
    "Allowance",
    "AuditEntry",
    "Clock",
    "Decision",
    "DenialReason",
    "Denied",
    "GroupRef",
    "InvalidQuotaError",
    "InvalidRefError",
    "JobRecord",
    "JobStatus",
    "NewJob",
    "PeriodStats",
    "QuotaStatus",
    "StorageError",
    "Store",
    "TopUser",
    "UnknownUserError",
    "UsageStats",
    "UserQuota",
    "UserRef",
    "create_engine",
    "parse_quota",
    "upgrade",
    "utc_now",
]
