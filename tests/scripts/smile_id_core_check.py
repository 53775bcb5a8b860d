"""Runs the official Python server SDK (smile-id-core) against `selfie-auth simulator`.

Usage: smile_id_core_check.py BASE_V1_URL PARTNER_ID API_KEY FIXTURES_DIR ENROLLED_USER

Every scenario prints one line; the exit status is the number of failures.
"""
import base64
import os
import sys
import uuid

from smile_id_core import Utilities, WebApi
from smile_id_core.ServerError import ServerError

from report import expect, finish, scenario

BASE, PARTNER, KEY, FIXTURES, USER = sys.argv[1:6]
CALLBACK = "http://127.0.0.1:9/unused"


def job_id():
    return "py-" + uuid.uuid4().hex[:16]



def fixture(name):
    return os.path.join(FIXTURES, name)


def b64(name):
    with open(fixture(name), "rb") as handle:
        return base64.b64encode(handle.read()).decode()


def params(job, **extra):
    return {"user_id": USER, "job_id": job, "job_type": 2, **extra}


selfie_file = [{"image_type_id": 0, "file_name": fixture("selfie.jpg")}]
liveness_files = [{"image_type_id": 4, "file_name": fixture(f"liveness_{i}.jpg")} for i in range(8)]
no_status = {"return_job_status": False, "return_history": False, "return_images": False, "use_enrolled_image": False}
full_status = {"return_job_status": True, "return_history": True, "return_images": True, "use_enrolled_image": False}



@scenario("submit_job selfie only, return_job_status false")
def _():
    result = WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(params(job_id()), selfie_file, {}, no_status)
    expect(result["success"] is True, result)
    expect(len(result["smile_job_id"]) == 10, result)


@scenario("submit_job selfie + 8 liveness, return_job_status true with history and image links")
def _():
    result = WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(
        params(job_id(), optional_info="kept"), selfie_file + liveness_files, {}, full_status
    )
    expect(result["job_complete"] is True, result)
    expect(result["job_success"] is True, result)
    expect(result["result"]["ResultCode"] == "0820", result)
    expect(result["result"]["PartnerParams"]["optional_info"] == "kept", result)
    expect(len(result["history"]) == 1, result)
    expect(result["image_links"]["selfie_image"].startswith("http"), result)


@scenario("submit_job base64 selfie + base64 liveness (base64imgString junk entries)")
def _():
    images = [{"image_type_id": 2, "image": b64("selfie.jpg")}] + [
        {"image_type_id": 6, "image": b64(f"liveness_{i}.jpg")} for i in range(8)
    ]
    result = WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(params(job_id()), images, {}, full_status)
    expect(result["result"]["ResultCode"] == "0820", result)


@scenario("sandbox_result 1 is rejected")
def _():
    result = WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(
        params(job_id(), sandbox_result="1"), selfie_file, {}, full_status
    )
    expect(result["job_complete"] is True and result["job_success"] is False, result)
    expect(result["result"]["ResultCode"] == "0821", result)


@scenario("sandbox_result 2 is provisional, then final after human review")
def _():
    result = WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(
        params(job_id(), sandbox_result="2"), selfie_file, {}, full_status
    )
    expect(result["job_complete"] is True, result)
    expect(result["result"]["ResultCode"] == "1220", result)
    expect([entry["ResultCode"] for entry in result["history"]] == ["0822", "1220"], result)


@scenario("Utilities.get_job_status verifies the signed answer")
def _():
    job = job_id()
    WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(params(job), selfie_file, {}, no_status)
    status = {}
    for _ in range(50):
        status = Utilities(PARTNER, KEY, BASE).get_job_status(
            params(job), {"return_history": True, "return_images": False}
        )
        if status["job_complete"]:
            break
        import time
        time.sleep(0.1)
    expect(status["job_complete"] is True and status["result"]["ResultCode"] == "0820", status)


def expect_server_error(code, fn):
    try:
        fn()
    except ServerError as error:
        expect(code in str(error), f"expected {code} in: {error}")
        return
    raise AssertionError(f"expected a ServerError with {code}")


@scenario("unknown user is refused with 2210")
def _():
    expect_server_error("2210", lambda: WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(
        {"user_id": "nobody-" + uuid.uuid4().hex, "job_id": job_id(), "job_type": 2}, selfie_file, {}, no_status))


@scenario("reused job_id is refused with 2215")
def _():
    job = job_id()
    WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(params(job), selfie_file, {}, no_status)
    expect_server_error("2215", lambda: WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(
        params(job), selfie_file, {}, no_status))


@scenario("unsupported job_type 99 is refused with 2212")
def _():
    expect_server_error("2212", lambda: WebApi(PARTNER, CALLBACK, KEY, BASE).submit_job(
        {"user_id": USER, "job_id": job_id(), "job_type": 99}, selfie_file, {}, no_status))


@scenario("wrong API key is refused with 2205")
def _():
    expect_server_error("2205", lambda: WebApi(PARTNER, CALLBACK, "not-the-key", BASE).submit_job(
        params(job_id()), selfie_file, {}, no_status))


@scenario("job_status of an unknown job is an error")
def _():
    try:
        Utilities(PARTNER, KEY, BASE).get_job_status(params("never-submitted"), {"return_history": False, "return_images": False})
    except ServerError:
        return
    raise AssertionError("expected a ServerError")


finish()
