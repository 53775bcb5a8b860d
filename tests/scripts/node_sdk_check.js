// Runs the official Node server SDK (smile-identity-core) against `selfie-auth simulator`
// over https (the SDK forces https for custom URLs).
//
// Usage: NODE_EXTRA_CA_CERTS=cert.pem node node_sdk_check.js BASE_V1_URL PARTNER_ID API_KEY FIXTURES_DIR USER_ID
// Every scenario prints one line; the exit status is the number of failures.
'use strict';
const fs = require('fs');
const path = require('path');
const { WebApi, Utilities } = require('smile-identity-core');

const [base, partner, key, fixtures, user] = process.argv.slice(2);
const callback = 'https://127.0.0.1:9/unused';
let failures = 0;
let counter = 0;

const jobId = () => `js-${process.pid}-${(counter += 1)}`;
const fixture = (name) => path.join(fixtures, name);
const b64 = (name) => fs.readFileSync(fixture(name)).toString('base64');
const params = (job, extra = {}) => ({ user_id: user, job_id: job, job_type: 2, ...extra });
const selfieFile = [{ image_type_id: 0, image: fixture('selfie.jpg') }];
// Node never zips liveness files (type 4); it sends liveness as base64 (type 6).
const liveness = Array.from({ length: 8 }, (_, i) => ({ image_type_id: 6, image: b64(`liveness_${i}.jpg`) }));
const noStatus = { return_job_status: false };
const fullStatus = { return_job_status: true, return_history: true, return_images: true };

function expect(condition, message) {
  if (!condition) throw new Error(typeof message === 'string' ? message : JSON.stringify(message));
}

async function scenario(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (error) {
    failures += 1;
    console.log(`FAIL ${name}: ${error && error.message}`);
  }
}

async function refusedWith(code, fn) {
  try {
    await fn();
  } catch (error) {
    const answered = error.response && error.response.data && String(error.response.data.code);
    expect(answered === code, `expected ${code}, got ${answered} (${error.message})`);
    return;
  }
  throw new Error(`expected a refusal with ${code}`);
}

(async () => {
  await scenario('submit_job selfie file, return_job_status false', async () => {
    const result = await new WebApi(partner, callback, key, base).submit_job(params(jobId()), selfieFile, {}, noStatus);
    expect(result.success === true && String(result.smile_job_id).length === 10, result);
  });

  await scenario('submit_job selfie + 8 base64 liveness, job status with history and image links', async () => {
    const result = await new WebApi(partner, callback, key, base).submit_job(
      params(jobId(), { optional_info: 'kept' }), selfieFile.concat(liveness), {}, fullStatus);
    expect(result.job_complete === true && result.job_success === true, result);
    expect(result.result.ResultCode === '0820' && result.result.PartnerParams.optional_info === 'kept', result);
    expect(result.history.length === 1 && result.image_links.selfie_image.startsWith('https://'), result);
  });

  await scenario('sandbox_result 2 is provisional, then final', async () => {
    const result = await new WebApi(partner, callback, key, base).submit_job(
      params(jobId(), { sandbox_result: '2' }), selfieFile, {}, fullStatus);
    expect(result.result.ResultCode === '1220', result);
    expect(result.history.map((entry) => entry.ResultCode).join() === '0822,1220', result);
  });

  await scenario('Utilities.get_job_status verifies the signed answer', async () => {
    const job = jobId();
    await new WebApi(partner, callback, key, base).submit_job(params(job), selfieFile, {}, noStatus);
    let status = {};
    for (let attempt = 0; attempt < 50 && !status.job_complete; attempt += 1) {
      status = await new Utilities(partner, key, base).get_job_status(user, job, { return_history: true });
      if (!status.job_complete) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(status.job_complete === true && status.result.ResultCode === '0820', status);
  });

  await scenario('unknown user is refused with 2210', () => refusedWith('2210', () =>
    new WebApi(partner, callback, key, base).submit_job(
      { user_id: `nobody-${process.pid}`, job_id: jobId(), job_type: 2 }, selfieFile, {}, noStatus)));

  await scenario('reused job_id is refused with 2215', async () => {
    const job = jobId();
    await new WebApi(partner, callback, key, base).submit_job(params(job), selfieFile, {}, noStatus);
    await refusedWith('2215', () => new WebApi(partner, callback, key, base).submit_job(params(job), selfieFile, {}, noStatus));
  });

  await scenario('wrong API key is refused with 2205', () => refusedWith('2205', () =>
    new WebApi(partner, callback, 'not-the-key', base).submit_job(params(jobId()), selfieFile, {}, noStatus)));

  process.exit(failures);
})();
