// Calls selfie-auth from Node through the contract loaded with @grpc/proto-loader,
// and reads rich error details with the google/rpc protos vendored beside it, the
// way a Node caller would.
//
// Usage: node node_client_check.js ADDR PROTO_DIR SELFIE_JPEG
// Every scenario prints one line; the exit status is the number of failures.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [addr, protoDir, selfiePath] = process.argv.slice(2);
const selfie = fs.readFileSync(selfiePath);
const options = { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true };
const contract = grpc.loadPackageDefinition(loader.loadSync("selfieauth/v1/selfie_auth.proto", options));
const client = new contract.selfieauth.v1.SelfieAuth(addr, grpc.credentials.createInsecure());

// google.rpc.Status and its details, from the vendored protos only.
const rpc = new protobuf.Root();
rpc.resolvePath = (_origin, target) => (target.startsWith("google/protobuf/") ? target : path.join(protoDir, target));
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });

function details(error) {
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  const status = rpc.lookupType("google.rpc.Status").decode(bytes);
  const found = {};
  for (const any of status.details) {
    const name = any.type_url.split("/").pop();
    found[name.split(".").pop()] = rpc.lookupType(name).decode(any.value);
  }
  return found;
}

function call(method, request, timeoutSeconds = 20) {
  const deadline = new Date(Date.now() + timeoutSeconds * 1000);
  return new Promise((resolve, reject) =>
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response))),
  );
}

async function refused(method, request) {
  try {
    await call(method, request);
  } catch (error) {
    return error;
  }
  throw new Error(`${method} should have been refused`);
}

function expect(condition, what) {
  if (!condition) throw new Error(`unexpected: ${JSON.stringify(what)}`);
}

const user = `node-newcomer-${process.pid}`;
const scenarios = [
  ["EnrollUser enrols a new user, who can then be authenticated", async () => {
    const enrolled = await call("EnrollUser", { user_id: user, job_id: `${user}-enrol`, selfie_image: selfie, wait_for_result: true });
    expect(enrolled.created && enrolled.job.kind === "JOB_KIND_ENROLLMENT", enrolled.job);
    expect(enrolled.job.state === "JOB_STATE_COMPLETED" && enrolled.job.decision === "DECISION_APPROVED", enrolled.job);
    const authenticated = await call("SubmitAuthentication", { user_id: user, job_id: `${user}-auth`, selfie_image: selfie, wait_for_result: true });
    expect(authenticated.job.kind === "JOB_KIND_AUTHENTICATION" && authenticated.job.decision === "DECISION_APPROVED", authenticated.job);
  }],
  ["ListJobs pages a user's jobs newest first", async () => {
    const first = await call("ListJobs", { user_id: user, page_size: 1 });
    expect(first.jobs.map((job) => job.job_id).join() === `${user}-auth` && first.next_page_token, first);
    const rest = await call("ListJobs", { user_id: user, page_token: first.next_page_token });
    expect(rest.jobs.map((job) => job.job_id).join() === `${user}-enrol` && !rest.next_page_token, rest);
  }],
  ["a second enrolment is FAILED_PRECONDITION / USER_ALREADY_ENROLLED with smileIdCode", async () => {
    const error = await refused("EnrollUser", { user_id: user, job_id: `${user}-again`, selfie_image: selfie });
    const info = details(error).ErrorInfo;
    expect(error.code === grpc.status.FAILED_PRECONDITION, error.code);
    expect(info.reason === "USER_ALREADY_ENROLLED" && info.domain === "selfieauth.v1" && info.metadata.smileIdCode === "2209", info);
  }],
  ["an unknown job is NOT_FOUND with a named resource", async () => {
    const error = await refused("GetJob", { job_id: "no-such-job" });
    const found = details(error);
    expect(error.code === grpc.status.NOT_FOUND, error.code);
    expect(found.ErrorInfo.reason === "JOB_NOT_FOUND" && found.ErrorInfo.metadata.jobId === "no-such-job", found.ErrorInfo);
    expect(found.ResourceInfo.resource_name === "jobs/no-such-job", found.ResourceInfo);
  }],
];

(async () => {
  let failures = 0;
  for (const [name, run] of scenarios) {
    try {
      await run();
      console.log(`ok   ${name}`);
    } catch (error) {
      failures += 1;
      console.log(`FAIL ${name}: ${error.stack || error}`);
    }
  }
  client.close();
  process.exit(failures);
})();
