-- Who enrolled each user through this service: the one caller that may act
-- for it unless the policy grants others_users. Users enrolled before are
-- owned by the caller of their first enrolment.
CREATE TABLE users (
    user_id    TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO users (user_id, owner, created_at)
SELECT j.user_id, j.owner, j.created_at FROM jobs j
WHERE j.kind = 'ENROLLMENT' AND j.owner IS NOT NULL
  AND j.job_id = (SELECT k.job_id FROM jobs k
                  WHERE k.user_id = j.user_id AND k.kind = 'ENROLLMENT' AND k.owner IS NOT NULL
                  ORDER BY k.created_at, k.job_id LIMIT 1);
