"""Calls selfie-auth from Python through stubs generated from the contract, the
way a caller in another language would.

Usage: python_client_check.py ADDR PROTO_DIR SELFIE_JPEG USER_ID
Every scenario prints one line; the exit status is the number of failures.
"""
import os
import sys
import tempfile

import grpc
import grpc_tools
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

from report import expect, finish, scenario

ADDR, PROTO_DIR, SELFIE, USER = sys.argv[1:5]
generated = tempfile.mkdtemp()
well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
if protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={generated}",
                f"--grpc_python_out={generated}", "selfieauth/v1/selfie_auth.proto"]) != 0:
    sys.exit("protoc failed")
sys.path.insert(0, generated)
from selfieauth.v1 import selfie_auth_pb2 as pb  # noqa: E402
from selfieauth.v1 import selfie_auth_pb2_grpc as pb_grpc  # noqa: E402

stub = pb_grpc.SelfieAuthStub(grpc.insecure_channel(ADDR))
with open(SELFIE, "rb") as handle:
    selfie = handle.read()




@scenario("SubmitAuthentication waits for the final result")
def _():
    response = stub.SubmitAuthentication(
        pb.SubmitAuthenticationRequest(user_id=USER, job_id="py-1", selfie_image=selfie, wait_for_result=True,
                                       include_history=True, partner_params={"order": "42"}),
        timeout=20,
    )
    job = response.job
    expect(response.created, response)
    expect(job.state == pb.JOB_STATE_COMPLETED and job.decision == pb.DECISION_APPROVED, job)
    expect(job.result.result_code == "0820" and job.result.is_final, job.result)
    expect(job.partner_params["order"] == "42" and len(job.history) == 1, job)


@scenario("a repeated submission returns the same job")
def _():
    response = stub.SubmitAuthentication(
        pb.SubmitAuthenticationRequest(user_id=USER, job_id="py-1", selfie_image=selfie, partner_params={"order": "42"}))
    expect(not response.created and response.job.job_id == "py-1", response)


@scenario("GetJob and WatchJob")
def _():
    job = stub.GetJob(pb.GetJobRequest(job_id="py-1"))
    expect(job.state == pb.JOB_STATE_COMPLETED, job)
    events = [event for event in stub.WatchJob(pb.WatchJobRequest(job_id="py-1"), timeout=20)
              if event.kind != pb.JOB_EVENT_KIND_HEARTBEAT]
    kinds = [event.kind for event in events]
    expect(kinds == [pb.JOB_EVENT_KIND_CREATED, pb.JOB_EVENT_KIND_SUBMITTED, pb.JOB_EVENT_KIND_FINAL_RESULT], kinds)
    expect([event.sequence for event in events] == [1, 2, 3], events)


def details_of(error):
    status = rpc_status.from_call(error)
    found = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.PreconditionFailure):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


@scenario("an invalid request carries ErrorInfo and BadRequest")
def _():
    try:
        stub.SubmitAuthentication(pb.SubmitAuthenticationRequest(user_id="bad user", selfie_image=selfie))
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.INVALID_ARGUMENT, error)
        details = details_of(error)
        expect(details["ErrorInfo"].reason == "INVALID_FIELD" and details["ErrorInfo"].domain == "selfieauth.v1", details)
        expect(details["BadRequest"].field_violations[0].field == "user_id", details)
        return
    raise AssertionError("expected INVALID_ARGUMENT")


@scenario("an unknown user is FAILED_PRECONDITION / USER_NOT_ENROLLED")
def _():
    try:
        stub.SubmitAuthentication(pb.SubmitAuthenticationRequest(user_id="stranger", job_id="py-2", selfie_image=selfie))
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.FAILED_PRECONDITION, error)
        details = details_of(error)
        expect(details["ErrorInfo"].reason == "USER_NOT_ENROLLED" and "PreconditionFailure" in details, details)
        return
    raise AssertionError("expected FAILED_PRECONDITION")


@scenario("EnrollUser enrols a new user, who can then be authenticated")
def _():
    user = "py-newcomer"
    response = stub.EnrollUser(
        pb.EnrollUserRequest(user_id=user, job_id="py-enrol", selfie_image=selfie, wait_for_result=True), timeout=20)
    job = response.job
    expect(response.created and job.kind == pb.JOB_KIND_ENROLLMENT, job)
    expect(job.state == pb.JOB_STATE_COMPLETED and job.decision == pb.DECISION_APPROVED, job)
    authenticated = stub.SubmitAuthentication(
        pb.SubmitAuthenticationRequest(user_id=user, job_id="py-after-enrol", selfie_image=selfie,
                                       wait_for_result=True), timeout=20).job
    expect(authenticated.kind == pb.JOB_KIND_AUTHENTICATION and authenticated.decision == pb.DECISION_APPROVED,
           authenticated)
    try:
        stub.EnrollUser(pb.EnrollUserRequest(user_id=user, job_id="py-enrol-again", selfie_image=selfie))
    except grpc.RpcError as error:
        reason = details_of(error)["ErrorInfo"].reason
        expect(error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason == "USER_ALREADY_ENROLLED", error)
        return
    raise AssertionError("expected FAILED_PRECONDITION / USER_ALREADY_ENROLLED")


@scenario("ListJobs pages a user's jobs newest first")
def _():
    first = stub.ListJobs(pb.ListJobsRequest(user_id="py-newcomer", page_size=1))
    expect([job.job_id for job in first.jobs] == ["py-enrol-again"] and first.next_page_token, first)
    rest = stub.ListJobs(pb.ListJobsRequest(user_id="py-newcomer", page_token=first.next_page_token))
    expect([job.job_id for job in rest.jobs] == ["py-after-enrol", "py-enrol"] and not rest.next_page_token, rest)
    enrolments = stub.ListJobs(pb.ListJobsRequest(user_id="py-newcomer", kind=pb.JOB_KIND_ENROLLMENT,
                                                  state=pb.JOB_STATE_COMPLETED))
    expect([job.job_id for job in enrolments.jobs] == ["py-enrol"], enrolments)


finish()
