from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClaimVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLAIM_VERDICT_UNSPECIFIED: _ClassVar[ClaimVerdict]
    CLAIM_VERDICT_ALLOW: _ClassVar[ClaimVerdict]
    CLAIM_VERDICT_PARTIAL: _ClassVar[ClaimVerdict]
    CLAIM_VERDICT_BLOCK: _ClassVar[ClaimVerdict]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ALLOW: _ClassVar[Verdict]
    VERDICT_ALLOW_EXEMPT: _ClassVar[Verdict]
    VERDICT_BLOCK: _ClassVar[Verdict]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_OK: _ClassVar[Reason]
    REASON_EMERGENCY_EXEMPT: _ClassVar[Reason]
    REASON_SUSPENDED: _ClassVar[Reason]
    REASON_TERMINATED: _ClassVar[Reason]
    REASON_UNREGISTERED: _ClassVar[Reason]
    REASON_MALFORMED_CODE: _ClassVar[Reason]
    REASON_MISSING_PRACTITIONER: _ClassVar[Reason]
    REASON_UNVERIFIED: _ClassVar[Reason]

class PractitionerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRACTITIONER_STATUS_UNSPECIFIED: _ClassVar[PractitionerStatus]
    PRACTITIONER_STATUS_REGISTERED: _ClassVar[PractitionerStatus]
    PRACTITIONER_STATUS_SUSPENDED: _ClassVar[PractitionerStatus]
    PRACTITIONER_STATUS_TERMINATED: _ClassVar[PractitionerStatus]
    PRACTITIONER_STATUS_UNREGISTERED: _ClassVar[PractitionerStatus]
    PRACTITIONER_STATUS_MALFORMED: _ClassVar[PractitionerStatus]
CLAIM_VERDICT_UNSPECIFIED: ClaimVerdict
CLAIM_VERDICT_ALLOW: ClaimVerdict
CLAIM_VERDICT_PARTIAL: ClaimVerdict
CLAIM_VERDICT_BLOCK: ClaimVerdict
VERDICT_UNSPECIFIED: Verdict
VERDICT_ALLOW: Verdict
VERDICT_ALLOW_EXEMPT: Verdict
VERDICT_BLOCK: Verdict
REASON_UNSPECIFIED: Reason
REASON_OK: Reason
REASON_EMERGENCY_EXEMPT: Reason
REASON_SUSPENDED: Reason
REASON_TERMINATED: Reason
REASON_UNREGISTERED: Reason
REASON_MALFORMED_CODE: Reason
REASON_MISSING_PRACTITIONER: Reason
REASON_UNVERIFIED: Reason
PRACTITIONER_STATUS_UNSPECIFIED: PractitionerStatus
PRACTITIONER_STATUS_REGISTERED: PractitionerStatus
PRACTITIONER_STATUS_SUSPENDED: PractitionerStatus
PRACTITIONER_STATUS_TERMINATED: PractitionerStatus
PRACTITIONER_STATUS_UNREGISTERED: PractitionerStatus
PRACTITIONER_STATUS_MALFORMED: PractitionerStatus

class CheckClaimRequest(_message.Message):
    __slots__ = ("claim_id", "fixmedins_code", "med_type", "emergency", "items", "mdtrt_id", "min_registry_version")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    FIXMEDINS_CODE_FIELD_NUMBER: _ClassVar[int]
    MED_TYPE_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MDTRT_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    fixmedins_code: str
    med_type: str
    emergency: bool
    items: _containers.RepeatedCompositeFieldContainer[LineItem]
    mdtrt_id: str
    min_registry_version: str
    def __init__(self, claim_id: _Optional[str] = ..., fixmedins_code: _Optional[str] = ..., med_type: _Optional[str] = ..., emergency: _Optional[bool] = ..., items: _Optional[_Iterable[_Union[LineItem, _Mapping]]] = ..., mdtrt_id: _Optional[str] = ..., min_registry_version: _Optional[str] = ...) -> None: ...

class LineItem(_message.Message):
    __slots__ = ("feedetl_sn", "fee_ocur_time", "med_list_codg", "amount_fen", "bilg_dr_codg", "orders_dr_code", "emergency")
    FEEDETL_SN_FIELD_NUMBER: _ClassVar[int]
    FEE_OCUR_TIME_FIELD_NUMBER: _ClassVar[int]
    MED_LIST_CODG_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    BILG_DR_CODG_FIELD_NUMBER: _ClassVar[int]
    ORDERS_DR_CODE_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_FIELD_NUMBER: _ClassVar[int]
    feedetl_sn: str
    fee_ocur_time: str
    med_list_codg: str
    amount_fen: int
    bilg_dr_codg: str
    orders_dr_code: str
    emergency: bool
    def __init__(self, feedetl_sn: _Optional[str] = ..., fee_ocur_time: _Optional[str] = ..., med_list_codg: _Optional[str] = ..., amount_fen: _Optional[int] = ..., bilg_dr_codg: _Optional[str] = ..., orders_dr_code: _Optional[str] = ..., emergency: _Optional[bool] = ...) -> None: ...

class CheckClaimResponse(_message.Message):
    __slots__ = ("decision_id", "registry_version", "verdict", "allowed_amount_fen", "blocked_amount_fen", "items", "enforced")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    registry_version: str
    verdict: ClaimVerdict
    allowed_amount_fen: int
    blocked_amount_fen: int
    items: _containers.RepeatedCompositeFieldContainer[ItemDecision]
    enforced: bool
    def __init__(self, decision_id: _Optional[str] = ..., registry_version: _Optional[str] = ..., verdict: _Optional[_Union[ClaimVerdict, str]] = ..., allowed_amount_fen: _Optional[int] = ..., blocked_amount_fen: _Optional[int] = ..., items: _Optional[_Iterable[_Union[ItemDecision, _Mapping]]] = ..., enforced: _Optional[bool] = ...) -> None: ...

class ItemDecision(_message.Message):
    __slots__ = ("feedetl_sn", "verdict", "reason", "prac_psn_code", "begntime", "endtime", "chg_rea", "enforced", "amount_fen", "message")
    FEEDETL_SN_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRAC_PSN_CODE_FIELD_NUMBER: _ClassVar[int]
    BEGNTIME_FIELD_NUMBER: _ClassVar[int]
    ENDTIME_FIELD_NUMBER: _ClassVar[int]
    CHG_REA_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FEN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    feedetl_sn: str
    verdict: Verdict
    reason: Reason
    prac_psn_code: str
    begntime: str
    endtime: str
    chg_rea: str
    enforced: bool
    amount_fen: int
    message: str
    def __init__(self, feedetl_sn: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reason: _Optional[_Union[Reason, str]] = ..., prac_psn_code: _Optional[str] = ..., begntime: _Optional[str] = ..., endtime: _Optional[str] = ..., chg_rea: _Optional[str] = ..., enforced: _Optional[bool] = ..., amount_fen: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetPractitionerRequest(_message.Message):
    __slots__ = ("prac_psn_code", "at_time", "fixmedins_code", "min_registry_version")
    PRAC_PSN_CODE_FIELD_NUMBER: _ClassVar[int]
    AT_TIME_FIELD_NUMBER: _ClassVar[int]
    FIXMEDINS_CODE_FIELD_NUMBER: _ClassVar[int]
    MIN_REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    prac_psn_code: str
    at_time: str
    fixmedins_code: str
    min_registry_version: str
    def __init__(self, prac_psn_code: _Optional[str] = ..., at_time: _Optional[str] = ..., fixmedins_code: _Optional[str] = ..., min_registry_version: _Optional[str] = ...) -> None: ...

class CheckClaimsRequest(_message.Message):
    __slots__ = ("claims", "min_registry_version")
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    MIN_REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    claims: _containers.RepeatedCompositeFieldContainer[CheckClaimRequest]
    min_registry_version: str
    def __init__(self, claims: _Optional[_Iterable[_Union[CheckClaimRequest, _Mapping]]] = ..., min_registry_version: _Optional[str] = ...) -> None: ...

class ClaimError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ClaimResult(_message.Message):
    __slots__ = ("claim_id", "response", "error")
    CLAIM_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    claim_id: str
    response: CheckClaimResponse
    error: ClaimError
    def __init__(self, claim_id: _Optional[str] = ..., response: _Optional[_Union[CheckClaimResponse, _Mapping]] = ..., error: _Optional[_Union[ClaimError, _Mapping]] = ...) -> None: ...

class CheckClaimsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClaimResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ClaimResult, _Mapping]]] = ...) -> None: ...

class StatusWindow(_message.Message):
    __slots__ = ("status", "begntime", "endtime", "ban_endtime", "chg_rea")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BEGNTIME_FIELD_NUMBER: _ClassVar[int]
    ENDTIME_FIELD_NUMBER: _ClassVar[int]
    BAN_ENDTIME_FIELD_NUMBER: _ClassVar[int]
    CHG_REA_FIELD_NUMBER: _ClassVar[int]
    status: PractitionerStatus
    begntime: str
    endtime: str
    ban_endtime: str
    chg_rea: str
    def __init__(self, status: _Optional[_Union[PractitionerStatus, str]] = ..., begntime: _Optional[str] = ..., endtime: _Optional[str] = ..., ban_endtime: _Optional[str] = ..., chg_rea: _Optional[str] = ...) -> None: ...

class GetPractitionerResponse(_message.Message):
    __slots__ = ("prac_psn_code", "prac_psn_type", "status", "may_bill", "may_bill_emergency", "current", "upcoming", "at_time", "registry_version")
    PRAC_PSN_CODE_FIELD_NUMBER: _ClassVar[int]
    PRAC_PSN_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MAY_BILL_FIELD_NUMBER: _ClassVar[int]
    MAY_BILL_EMERGENCY_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    UPCOMING_FIELD_NUMBER: _ClassVar[int]
    AT_TIME_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    prac_psn_code: str
    prac_psn_type: str
    status: PractitionerStatus
    may_bill: bool
    may_bill_emergency: bool
    current: StatusWindow
    upcoming: _containers.RepeatedCompositeFieldContainer[StatusWindow]
    at_time: str
    registry_version: str
    def __init__(self, prac_psn_code: _Optional[str] = ..., prac_psn_type: _Optional[str] = ..., status: _Optional[_Union[PractitionerStatus, str]] = ..., may_bill: _Optional[bool] = ..., may_bill_emergency: _Optional[bool] = ..., current: _Optional[_Union[StatusWindow, _Mapping]] = ..., upcoming: _Optional[_Iterable[_Union[StatusWindow, _Mapping]]] = ..., at_time: _Optional[str] = ..., registry_version: _Optional[str] = ...) -> None: ...
