"""Rules of the directory that live in PostgreSQL but not in Django's model state.

Named here so that migrations and tests use the same names.
"""

from __future__ import annotations

PATIENT_DOCTOR_INSTITUTION_FK = "clinical_patient_doctor_works_at_institution"
PATIENT_DOB_NOT_IN_FUTURE = "clinical_patient_dob_not_in_future"
DOCTOR_ACTIVE_MEMBERSHIP = "clinical_doctor_active_membership"
MEMBERSHIP_KEEPS_DOCTOR = "clinical_membership_keeps_doctor"
HAS_DOCTOR_MEMBERSHIP = "clinical_has_active_doctor_membership"

ADD_PATIENT_DOCTOR_INSTITUTION_FK = f"""
ALTER TABLE clinical_patient
    ADD CONSTRAINT {PATIENT_DOCTOR_INSTITUTION_FK}
    FOREIGN KEY (doctor_id, institution_id)
    REFERENCES clinical_doctor (id, institution_id)
    ON UPDATE RESTRICT ON DELETE RESTRICT;
"""
DROP_PATIENT_DOCTOR_INSTITUTION_FK = (
    f"ALTER TABLE clinical_patient DROP CONSTRAINT IF EXISTS {PATIENT_DOCTOR_INSTITUTION_FK};"
)

# A CHECK against CURRENT_DATE would make old rows fail on restore; a trigger
# judges each write at the moment it happens.
ADD_PATIENT_DOB_TRIGGER = f"""
CREATE OR REPLACE FUNCTION {PATIENT_DOB_NOT_IN_FUTURE}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.date_of_birth > CURRENT_DATE THEN
        RAISE EXCEPTION 'date of birth is in the future'
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = '{PATIENT_DOB_NOT_IN_FUTURE}',
                  TABLE = 'clinical_patient',
                  COLUMN = 'date_of_birth';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER {PATIENT_DOB_NOT_IN_FUTURE}
    BEFORE INSERT OR UPDATE OF date_of_birth ON clinical_patient
    FOR EACH ROW EXECUTE FUNCTION {PATIENT_DOB_NOT_IN_FUTURE}();
"""
DROP_PATIENT_DOB_TRIGGER = f"""
DROP TRIGGER IF EXISTS {PATIENT_DOB_NOT_IN_FUTURE} ON clinical_patient;
DROP FUNCTION IF EXISTS {PATIENT_DOB_NOT_IN_FUTURE}();
"""

# Checked at commit, so a service may create the membership and the doctor in
# either order within one transaction. clock_timestamp(), not now(): now() is
# the transaction's start, earlier than a membership created inside it.
ADD_DOCTOR_MEMBERSHIP_TRIGGER = f"""
CREATE OR REPLACE FUNCTION {HAS_DOCTOR_MEMBERSHIP}(p_user bigint, p_institution bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM clinical_institutionmembership m
        WHERE m.user_id = p_user
          AND m.institution_id = p_institution
          AND m.role = 'doctor'
          AND m.valid_from <= clock_timestamp()
          AND (m.valid_until IS NULL OR m.valid_until > clock_timestamp())
    )
$$;
CREATE OR REPLACE FUNCTION {DOCTOR_ACTIVE_MEMBERSHIP}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT {HAS_DOCTOR_MEMBERSHIP}(NEW.user_id, NEW.institution_id) THEN
        RAISE EXCEPTION 'a doctor needs an active doctor membership at the primary institution'
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = '{DOCTOR_ACTIVE_MEMBERSHIP}',
                  TABLE = 'clinical_doctor';
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER {DOCTOR_ACTIVE_MEMBERSHIP}
    AFTER INSERT OR UPDATE OF institution_id, user_id ON clinical_doctor
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION {DOCTOR_ACTIVE_MEMBERSHIP}();
"""
DROP_DOCTOR_MEMBERSHIP_TRIGGER = f"""
DROP TRIGGER IF EXISTS {DOCTOR_ACTIVE_MEMBERSHIP} ON clinical_doctor;
DROP FUNCTION IF EXISTS {DOCTOR_ACTIVE_MEMBERSHIP}();
DROP FUNCTION IF EXISTS {HAS_DOCTOR_MEMBERSHIP}(bigint, bigint);
"""

# The other side of the same rule: ending or deleting the doctor membership at
# a doctor's primary institution is refused while the doctor is still there.
# (A membership created with an end date in the future simply expires; that
# is a service rule, since no write happens when the date passes.)
ADD_MEMBERSHIP_KEEPS_DOCTOR_TRIGGER = f"""
CREATE OR REPLACE FUNCTION {MEMBERSHIP_KEEPS_DOCTOR}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.role = 'doctor'
       AND EXISTS (
           SELECT 1 FROM clinical_doctor d
           WHERE d.user_id = OLD.user_id AND d.institution_id = OLD.institution_id
       )
       AND NOT {HAS_DOCTOR_MEMBERSHIP}(OLD.user_id, OLD.institution_id)
    THEN
        RAISE EXCEPTION 'the doctor membership at a doctor''s primary institution cannot end'
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = '{DOCTOR_ACTIVE_MEMBERSHIP}',
                  TABLE = 'clinical_institutionmembership';
    END IF;
    RETURN NULL;
END;
$$;
CREATE CONSTRAINT TRIGGER {MEMBERSHIP_KEEPS_DOCTOR}
    AFTER UPDATE OF valid_until, valid_from, role, user_id, institution_id OR DELETE
    ON clinical_institutionmembership
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION {MEMBERSHIP_KEEPS_DOCTOR}();
"""
DROP_MEMBERSHIP_KEEPS_DOCTOR_TRIGGER = f"""
DROP TRIGGER IF EXISTS {MEMBERSHIP_KEEPS_DOCTOR} ON clinical_institutionmembership;
DROP FUNCTION IF EXISTS {MEMBERSHIP_KEEPS_DOCTOR}();
"""

# Medical records (clinical.models.records) -------------------------------------
RECORD_IMMUTABLE = "clinical_record_immutable"
LEDGER_APPEND_ONLY = "clinical_ledger_append_only"

# What a record says never changes: an amendment is a new version. The payload
# column itself may be rewritten, because key rotation re-seals it; its
# plaintext is bound by data_hash, which may not change. Status moves only away
# from 'current' (superseded or entered in error), never back.
ADD_RECORD_IMMUTABLE_TRIGGER = f"""
CREATE OR REPLACE FUNCTION {RECORD_IMMUTABLE}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.data_hash IS DISTINCT FROM OLD.data_hash
       OR NEW.patient_id IS DISTINCT FROM OLD.patient_id
       OR NEW.record_type IS DISTINCT FROM OLD.record_type
       OR NEW.resource_type IS DISTINCT FROM OLD.resource_type
       OR NEW.series IS DISTINCT FROM OLD.series
       OR NEW.version IS DISTINCT FROM OLD.version
       OR NEW.supersedes_id IS DISTINCT FROM OLD.supersedes_id
       OR NEW.uuid IS DISTINCT FROM OLD.uuid
       OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR NEW.author_id IS DISTINCT FROM OLD.author_id
       OR NEW.institution_id IS DISTINCT FROM OLD.institution_id
       OR NEW.source IS DISTINCT FROM OLD.source THEN
        RAISE EXCEPTION 'medical records are not edited in place; amend to create a new version'
            USING ERRCODE = 'check_violation', CONSTRAINT = '{RECORD_IMMUTABLE}', TABLE = 'clinical_medicalrecord';
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status AND OLD.status <> 'current' THEN
        RAISE EXCEPTION 'only a current record changes status'
            USING ERRCODE = 'check_violation', CONSTRAINT = '{RECORD_IMMUTABLE}', TABLE = 'clinical_medicalrecord';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER {RECORD_IMMUTABLE}
    BEFORE UPDATE ON clinical_medicalrecord
    FOR EACH ROW EXECUTE FUNCTION {RECORD_IMMUTABLE}();
"""
DROP_RECORD_IMMUTABLE_TRIGGER = f"""
DROP TRIGGER IF EXISTS {RECORD_IMMUTABLE} ON clinical_medicalrecord;
DROP FUNCTION IF EXISTS {RECORD_IMMUTABLE}();
"""

# The chain is only appended to. (Row triggers do not see TRUNCATE, which the
# test runner uses between tests; an owner can still disable the trigger, which
# verify_integrity then catches.)
ADD_LEDGER_APPEND_ONLY_TRIGGER = f"""
CREATE OR REPLACE FUNCTION {LEDGER_APPEND_ONLY}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the integrity ledger is append-only'
        USING ERRCODE = 'check_violation', CONSTRAINT = '{LEDGER_APPEND_ONLY}', TABLE = 'clinical_ledgerentry';
END;
$$;
CREATE TRIGGER {LEDGER_APPEND_ONLY}
    BEFORE UPDATE OR DELETE ON clinical_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION {LEDGER_APPEND_ONLY}();
"""
DROP_LEDGER_APPEND_ONLY_TRIGGER = f"""
DROP TRIGGER IF EXISTS {LEDGER_APPEND_ONLY} ON clinical_ledgerentry;
DROP FUNCTION IF EXISTS {LEDGER_APPEND_ONLY}();
"""

# The ledger's head row (clinical.ledger). ------------------------------------------
LEDGER_GENESIS_HASH = "0" * 64
# The head row, created from the entries when missing (a new database, or a test
# database flushed between tests): a head that disappeared never restarts the chain.
ENSURE_LEDGER_HEAD = f"""
INSERT INTO clinical_ledgerhead (id, seq, entry_hash, prev_hash)
SELECT 1, COALESCE(last.seq, 0),
       COALESCE(last.entry_hash, '{LEDGER_GENESIS_HASH}'), COALESCE(last.prev_hash, '{LEDGER_GENESIS_HASH}')
FROM (SELECT 1) one
LEFT JOIN LATERAL (
    SELECT seq, entry_hash, prev_hash FROM clinical_ledgerentry ORDER BY seq DESC LIMIT 1
) last ON true
ON CONFLICT (id) DO NOTHING
"""

# Appointments (clinical.models.care) ---------------------------------------------------
APPOINTMENT_DOCTOR_NO_OVERLAP = "clinical_appointment_doctor_no_overlap"
APPOINTMENT_PATIENT_NO_OVERLAP = "clinical_appointment_patient_no_overlap"
APPOINTMENT_STATUS_TRANSITION = "clinical_appointment_status_transition"
APPOINTMENT_CLOSED_IS_FINAL = "clinical_appointment_closed_is_final"
APPOINTMENT_DOCTOR_MEMBERSHIP = "clinical_appointment_doctor_membership"

# Two scheduled appointments of one doctor, or of one patient, never overlap.
# Core PostgreSQL only: equality on the id is written as overlap of the
# one-point range [id, id], so gist needs no btree_gist. '[)' makes back-to-back
# appointments (10:00-10:30, 10:30-11:00) legal. Not deferrable: the conflict
# is raised at the INSERT or UPDATE, where the service turns it into a
# ValidationError.
ADD_APPOINTMENT_NO_OVERLAP = f"""
ALTER TABLE clinical_appointment
    ADD CONSTRAINT {APPOINTMENT_DOCTOR_NO_OVERLAP}
    EXCLUDE USING gist (
        int8range(doctor_id, doctor_id, '[]') WITH &&,
        tstzrange(starts_at, ends_at, '[)') WITH &&
    ) WHERE (status = 'scheduled');
ALTER TABLE clinical_appointment
    ADD CONSTRAINT {APPOINTMENT_PATIENT_NO_OVERLAP}
    EXCLUDE USING gist (
        int8range(patient_id, patient_id, '[]') WITH &&,
        tstzrange(starts_at, ends_at, '[)') WITH &&
    ) WHERE (status = 'scheduled');
"""
DROP_APPOINTMENT_NO_OVERLAP = f"""
ALTER TABLE clinical_appointment DROP CONSTRAINT IF EXISTS {APPOINTMENT_PATIENT_NO_OVERLAP};
ALTER TABLE clinical_appointment DROP CONSTRAINT IF EXISTS {APPOINTMENT_DOCTOR_NO_OVERLAP};
"""

# A scheduled appointment becomes completed, cancelled or a no-show; nothing
# leaves those three (clinical.models.care.ALLOWED_TRANSITIONS). Once closed,
# when, with whom, where and the who/when of its outcome stay as they were:
# the history of care does not move. (The patient may still change, for a
# later merge of duplicate patients. Key rotation rewrites only ciphertext.)
ADD_APPOINTMENT_STATUS_TRIGGER = f"""
CREATE OR REPLACE FUNCTION {APPOINTMENT_STATUS_TRANSITION}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT (OLD.status = 'scheduled' AND NEW.status IN ('completed', 'cancelled', 'no_show')) THEN
        RAISE EXCEPTION 'an appointment cannot go from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = '{APPOINTMENT_STATUS_TRANSITION}',
                  TABLE = 'clinical_appointment',
                  COLUMN = 'status';
    END IF;
    IF OLD.status <> 'scheduled'
       AND (NEW.doctor_id IS DISTINCT FROM OLD.doctor_id
            OR NEW.institution_id IS DISTINCT FROM OLD.institution_id
            OR NEW.starts_at IS DISTINCT FROM OLD.starts_at
            OR NEW.ends_at IS DISTINCT FROM OLD.ends_at
            OR NEW.cancelled_by_id IS DISTINCT FROM OLD.cancelled_by_id
            OR NEW.cancelled_at IS DISTINCT FROM OLD.cancelled_at
            OR NEW.outcome_recorded_by_id IS DISTINCT FROM OLD.outcome_recorded_by_id
            OR NEW.outcome_recorded_at IS DISTINCT FROM OLD.outcome_recorded_at) THEN
        RAISE EXCEPTION 'a % appointment is final', OLD.status
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = '{APPOINTMENT_CLOSED_IS_FINAL}',
                  TABLE = 'clinical_appointment';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER {APPOINTMENT_STATUS_TRANSITION}
    BEFORE UPDATE ON clinical_appointment
    FOR EACH ROW EXECUTE FUNCTION {APPOINTMENT_STATUS_TRANSITION}();
"""
DROP_APPOINTMENT_STATUS_TRIGGER = f"""
DROP TRIGGER IF EXISTS {APPOINTMENT_STATUS_TRANSITION} ON clinical_appointment;
DROP FUNCTION IF EXISTS {APPOINTMENT_STATUS_TRANSITION}();
"""

# A scheduled appointment is with a doctor who holds a doctor membership at
# its institution now and until the appointment ends. Judged when it is
# booked or moved (doctor, institution or times change), not later: a doctor
# who leaves does not rewrite the past, and a closed appointment is history.
# clock_timestamp(), not now(), as in the doctor's membership trigger.
ADD_APPOINTMENT_DOCTOR_MEMBERSHIP_TRIGGER = f"""
CREATE OR REPLACE FUNCTION {APPOINTMENT_DOCTOR_MEMBERSHIP}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A missing party is the NOT NULL constraints' to report.
    IF NEW.status <> 'scheduled' OR NEW.doctor_id IS NULL OR NEW.institution_id IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND NEW.doctor_id IS NOT DISTINCT FROM OLD.doctor_id
       AND NEW.institution_id IS NOT DISTINCT FROM OLD.institution_id
       AND NEW.starts_at IS NOT DISTINCT FROM OLD.starts_at
       AND NEW.ends_at IS NOT DISTINCT FROM OLD.ends_at THEN
        RETURN NEW;
    END IF;
    IF NOT EXISTS (
        SELECT 1
        FROM clinical_doctor d
        JOIN clinical_institutionmembership m ON m.user_id = d.user_id
        WHERE d.id = NEW.doctor_id
          AND m.institution_id = NEW.institution_id
          AND m.role = 'doctor'
          AND m.valid_from <= clock_timestamp()
          AND (m.valid_until IS NULL OR (m.valid_until > clock_timestamp() AND m.valid_until >= NEW.ends_at))
    ) THEN
        RAISE EXCEPTION 'the doctor has no doctor membership at the appointment''s institution for its time'
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = '{APPOINTMENT_DOCTOR_MEMBERSHIP}',
                  TABLE = 'clinical_appointment';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER {APPOINTMENT_DOCTOR_MEMBERSHIP}
    BEFORE INSERT OR UPDATE OF doctor_id, institution_id, starts_at, ends_at ON clinical_appointment
    FOR EACH ROW EXECUTE FUNCTION {APPOINTMENT_DOCTOR_MEMBERSHIP}();
"""
DROP_APPOINTMENT_DOCTOR_MEMBERSHIP_TRIGGER = f"""
DROP TRIGGER IF EXISTS {APPOINTMENT_DOCTOR_MEMBERSHIP} ON clinical_appointment;
DROP FUNCTION IF EXISTS {APPOINTMENT_DOCTOR_MEMBERSHIP}();
"""
