-- The decision record: every decision and every line item, partitioned by decision day
-- (China Standard Time), indexed for lookup by claim, by practitioner and service time.

CREATE TABLE audit_batches (
    -- A batch of decisions written in one transaction: its id makes a replay from a spool
    -- idempotent (the batch is skipped when its id is already here).
    batch_id    text PRIMARY KEY,
    written_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE decisions (
    decided_at          timestamptz NOT NULL,
    decision_id         text NOT NULL,
    claim_id            text NOT NULL,
    fixmedins_code      text NOT NULL,
    registry_version    text NOT NULL,
    verdict             text NOT NULL,     -- the claim's: ALLOW, PARTIAL, BLOCK
    enforced            boolean NOT NULL,
    allowed_amount_fen  bigint NOT NULL,
    blocked_amount_fen  bigint NOT NULL,
    batch_id            text NOT NULL,
    PRIMARY KEY (decision_id, decided_at)
) PARTITION BY RANGE (decided_at);
CREATE INDEX decisions_claim ON decisions (claim_id);

CREATE TABLE decision_items (
    decided_at      timestamptz NOT NULL,
    decision_id     text NOT NULL,
    item_index      integer NOT NULL,         -- position in the claim
    fixmedins_code  text NOT NULL,
    claim_id        text NOT NULL,
    feedetl_sn      text NOT NULL,
    fee_ocur_time   timestamptz NOT NULL,     -- the service time, which governs (DOMAIN.md rule 6)
    amount_fen      bigint NOT NULL,
    emergency       boolean NOT NULL,         -- the item's flag or the claim's
    bilg_dr_codg    text NOT NULL,            -- the ordering practitioner ('' when missing)
    orders_dr_code  text,                     -- the executing one, when another practitioner
    verdict         text NOT NULL,            -- ALLOW, ALLOW_EXEMPT, BLOCK
    reason          text NOT NULL,            -- OK, SUSPENDED, ..., UNVERIFIED
    prac_psn_code   text NOT NULL,            -- the practitioner the reason is about
    enforced        boolean NOT NULL
) PARTITION BY RANGE (decided_at);
CREATE INDEX decision_items_decision ON decision_items (decision_id);
-- Retroactive review: the items one practitioner took part in, by service time.
CREATE INDEX decision_items_ordering ON decision_items (bilg_dr_codg, fee_ocur_time);
CREATE INDEX decision_items_executing ON decision_items (orders_dr_code, fee_ocur_time)
    WHERE orders_dr_code IS NOT NULL;

-- What retroactive review found: items whose binding outcome the registry as it stands now
-- would change. One row per item, replaced as the registry changes again, deleted when the
-- item's outcome is what was paid after all.
CREATE TABLE review_findings (
    decision_id     text NOT NULL,
    item_index      integer NOT NULL,
    decided_at      timestamptz NOT NULL,
    claim_id        text NOT NULL,
    fixmedins_code  text NOT NULL,
    feedetl_sn      text NOT NULL,
    fee_ocur_time   timestamptz NOT NULL,
    amount_fen      bigint NOT NULL,
    prac_psn_code   text NOT NULL,
    was_verdict     text NOT NULL,
    was_reason      text NOT NULL,
    now_verdict     text NOT NULL,
    now_reason      text NOT NULL,
    action          text NOT NULL CHECK (action IN ('recover', 'resettle')),
    begntime        text NOT NULL,
    endtime         text NOT NULL,
    chg_rea         text NOT NULL,
    registry_version text NOT NULL,          -- the registry data the finding was made with
    found_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (decision_id, item_index)
);
CREATE INDEX review_findings_institution ON review_findings (fixmedins_code, action);

-- Where continuous review (gatekeeper review --follow) has read the change stream up to.
CREATE TABLE review_cursor (
    name        text PRIMARY KEY,
    position    text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
