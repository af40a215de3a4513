CREATE TABLE "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
);
CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name");
CREATE TABLE "runs" (
   "id" INTEGER PRIMARY KEY,
   "tenant" TEXT NOT NULL,
   "kind" TEXT NOT NULL,
   "trigger" TEXT,
   "slot" TEXT,
   "status" TEXT NOT NULL,
   "started_at" TEXT NOT NULL,
   "ended_at" TEXT,
   "duration_s" REAL,
   "snapshot_id" TEXT,
   "files" INTEGER,
   "bytes_added" INTEGER,
   "bytes_processed" INTEGER,
   "snapshots_kept" INTEGER,
   "repository_bytes" INTEGER,
   "error" TEXT,
   "host" TEXT,
   "pid" INTEGER,
   "pid_start" INTEGER,
   "operator" TEXT,
   "restic_version" TEXT,
   "restic_calls" INTEGER
, "files_checked" INTEGER, "bytes_restored" INTEGER, "subset" TEXT, "problems" TEXT, "sample_checked" INTEGER, "sample_skipped" INTEGER, "rto_minutes" INTEGER, "report" TEXT, "scratch" TEXT, "source" TEXT, "kept_snapshots" TEXT, "policy_fingerprint" TEXT, "clock_synchronized" INTEGER, "databases" TEXT, "immutability" TEXT, "maintenance_pending" INTEGER, "observations" TEXT, "restore_s" REAL, "copies" TEXT, "copy_id" TEXT);
CREATE INDEX "idx_runs_tenant_kind_started_at"
    ON "runs" ("tenant", "kind", "started_at");
CREATE INDEX "idx_runs_status"
    ON "runs" ("status");
CREATE TABLE "audit_log" (
   "seq" INTEGER PRIMARY KEY,
   "time" TEXT NOT NULL,
   "operator" TEXT,
   "os_user" TEXT,
   "host" TEXT,
   "tenant" TEXT,
   "action" TEXT NOT NULL,
   "outcome" TEXT NOT NULL,
   "details" TEXT,
   "prev_hash" TEXT NOT NULL,
   "hash" TEXT NOT NULL
);
CREATE INDEX "idx_audit_log_tenant_time"
    ON "audit_log" ("tenant", "time");
CREATE TABLE "media" (
   "serial" TEXT PRIMARY KEY,
   "type" TEXT NOT NULL,
   "vendor" TEXT,
   "model" TEXT,
   "capacity" INTEGER,
   "asset_tag" TEXT,
   "tenant" TEXT,
   "host" TEXT,
   "registered_at" TEXT NOT NULL,
   "registered_by" TEXT
, "classification" TEXT);
CREATE INDEX "idx_media_tenant"
    ON "media" ("tenant");
CREATE TABLE "media_events" (
   "id" INTEGER PRIMARY KEY,
   "serial" TEXT NOT NULL REFERENCES "media"("serial"),
   "time" TEXT NOT NULL,
   "state" TEXT NOT NULL,
   "record_id" INTEGER,
   "operator" TEXT,
   "reason" TEXT
);
CREATE INDEX "idx_media_events_serial_id"
    ON "media_events" ("serial", "id");
CREATE TABLE "sanitizations" (
   "id" INTEGER PRIMARY KEY REFERENCES "records"("id"),
   "serial" TEXT NOT NULL REFERENCES "media"("serial"),
   "device" TEXT,
   "device_kind" TEXT,
   "device_serial" TEXT,
   "device_model" TEXT,
   "method" TEXT NOT NULL,
   "category" TEXT,
   "passes" TEXT,
   "verify_mode" TEXT,
   "stream_seed" TEXT,
   "sample_seed" TEXT,
   "sample_plan" TEXT,
   "result" TEXT NOT NULL,
   "size" INTEGER,
   "bytes_written" INTEGER,
   "bytes_verified" INTEGER,
   "mismatches" INTEGER,
   "io_errors" INTEGER,
   "hash" TEXT,
   "started_at" TEXT NOT NULL,
   "ended_at" TEXT,
   "duration_s" REAL,
   "throughput_bps" REAL,
   "operator" TEXT,
   "witness" TEXT,
   "organization" TEXT,
   "tool_version" TEXT,
   "hardware_command" TEXT,
   "destination_after" TEXT,
   "classification" TEXT,
   "backup" TEXT,
   "notes" TEXT,
   "error" TEXT,
   "host" TEXT,
   "pid" INTEGER,
   "pid_start" INTEGER
, "people" TEXT, "technique" TEXT, "tool" TEXT, "accept_clear" TEXT, "categorization" TEXT, "drive_evidence" TEXT, "verification_result" TEXT);
CREATE INDEX "idx_sanitizations_result"
    ON "sanitizations" ("result");
CREATE TABLE "destructions" (
   "id" INTEGER PRIMARY KEY REFERENCES "records"("id"),
   "serial" TEXT NOT NULL REFERENCES "media"("serial"),
   "method" TEXT NOT NULL,
   "category" TEXT,
   "witness" TEXT NOT NULL,
   "operator" TEXT,
   "organization" TEXT,
   "performed_at" TEXT NOT NULL,
   "evidence" TEXT,
   "hash" TEXT NOT NULL,
   "destination_after" TEXT,
   "notes" TEXT,
   "host" TEXT
, "people" TEXT, "technique" TEXT, "service" TEXT, "location" TEXT, "service_certificate" TEXT, "destroyed_on" TEXT);
CREATE TABLE "certificates" (
   "id" INTEGER PRIMARY KEY,
   "record_id" INTEGER NOT NULL REFERENCES "records"("id"),
   "issued_at" TEXT NOT NULL,
   "payload" TEXT NOT NULL,
   "signature" TEXT NOT NULL,
   "key_fingerprint" TEXT,
   "public_key" TEXT,
   "audit_seq" INTEGER,
   "audit_hash" TEXT
);
CREATE INDEX "idx_certificates_record_id"
    ON "certificates" ("record_id");
CREATE TABLE "policy_versions" (
   "id" INTEGER PRIMARY KEY,
   "tenant" TEXT NOT NULL,
   "fingerprint" TEXT NOT NULL,
   "document" TEXT NOT NULL,
   "seen_at" TEXT NOT NULL,
   "operator" TEXT
);
CREATE INDEX "idx_policy_versions_tenant_id"
    ON "policy_versions" ("tenant", "id");
CREATE TABLE "policy_flags" (
   "id" INTEGER PRIMARY KEY,
   "tenant" TEXT NOT NULL,
   "version_id" INTEGER NOT NULL REFERENCES "policy_versions"("id"),
   "changes" TEXT NOT NULL,
   "flagged_at" TEXT NOT NULL,
   "acknowledged_by" TEXT,
   "acknowledged_os_user" TEXT,
   "acknowledged_at" TEXT
);
CREATE TABLE "approvals" (
   "id" INTEGER PRIMARY KEY,
   "kind" TEXT NOT NULL,
   "subject" TEXT NOT NULL,
   "tenant" TEXT,
   "requested_by" TEXT NOT NULL,
   "requested_os_user" TEXT,
   "requested_at" TEXT NOT NULL,
   "expires_at" TEXT NOT NULL,
   "message" TEXT NOT NULL,
   "details" TEXT,
   "status" TEXT NOT NULL,
   "approved_by" TEXT,
   "approved_os_user" TEXT,
   "approved_at" TEXT,
   "signature" TEXT,
   "key_fingerprint" TEXT
);
CREATE INDEX "idx_approvals_kind_subject"
    ON "approvals" ("kind", "subject");
CREATE TABLE "database_dumps" (
   "id" INTEGER PRIMARY KEY,
   "run_id" INTEGER NOT NULL REFERENCES "runs"("id"),
   "tenant" TEXT NOT NULL,
   "name" TEXT NOT NULL,
   "type" TEXT NOT NULL,
   "status" TEXT NOT NULL,
   "snapshot_id" TEXT,
   "inventory_snapshot_id" TEXT,
   "bytes" INTEGER,
   "tables" TEXT,
   "error" TEXT,
   "duration_s" REAL,
   "dumped_at" TEXT NOT NULL
);
CREATE INDEX "idx_database_dumps_tenant_name_id"
    ON "database_dumps" ("tenant", "name", "id");
CREATE TABLE "inbox" (
   "name" TEXT PRIMARY KEY,
   "result_id" TEXT,
   "tenant" TEXT,
   "kind" TEXT,
   "status" TEXT NOT NULL,
   "reason" TEXT,
   "signed_by" TEXT,
   "run_ids" TEXT,
   "seen_at" TEXT NOT NULL
);
CREATE UNIQUE INDEX "idx_inbox_result_id"
    ON "inbox" ("result_id");
CREATE TABLE "copy_results" (
   "id" INTEGER PRIMARY KEY,
   "run_id" INTEGER NOT NULL REFERENCES "runs"("id"),
   "tenant" TEXT NOT NULL,
   "copy_id" TEXT NOT NULL,
   "destination" TEXT,
   "status" TEXT NOT NULL,
   "snapshot_id" TEXT,
   "source_snapshot_id" TEXT,
   "snapshot_time" TEXT,
   "snapshots_copied" INTEGER,
   "snapshots_kept" INTEGER,
   "error" TEXT,
   "duration_s" REAL,
   "copied_at" TEXT NOT NULL,
   "kept_snapshots" TEXT
);
CREATE INDEX "idx_copy_results_tenant_copy_id_id"
    ON "copy_results" ("tenant", "copy_id", "id");
CREATE TABLE "records" (
   "id" INTEGER PRIMARY KEY,
   "kind" TEXT NOT NULL,
   "serial" TEXT REFERENCES "media"("serial"),
   "created_at" TEXT NOT NULL
, "tenant" TEXT);
CREATE TABLE "erasures" (
   "id" INTEGER PRIMARY KEY REFERENCES "records"("id"),
   "tenant" TEXT NOT NULL,
   "kind" TEXT NOT NULL,
   "status" TEXT NOT NULL,
   "reason" TEXT,
   "witness" TEXT,
   "operator" TEXT,
   "os_user" TEXT,
   "requested_at" TEXT NOT NULL,
   "started_at" TEXT,
   "ended_at" TEXT,
   "snapshots" TEXT,
   "inventory" TEXT,
   "destinations" TEXT,
   "kept" TEXT,
   "method" TEXT,
   "error" TEXT,
   "attempts" INTEGER,
   "host" TEXT
);
CREATE INDEX "idx_erasures_tenant_kind_id"
    ON "erasures" ("tenant", "kind", "id");
CREATE INDEX "idx_runs_tenant_kind_latest" on "runs" ("tenant", "kind", coalesce("ended_at", "started_at"), "id");
