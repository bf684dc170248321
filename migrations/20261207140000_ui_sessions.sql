-- Dashboard (/ui) sessions. They live here rather than in one API process's memory so that any
-- API replica accepts a session another one opened. Only a SHA-256 hash of the session token
-- (the cookie's value) is stored: a copy of this table signs nobody in. Each session carries the
-- CSRF token its forms must post.
create table ui_sessions (
    token_hash bytea primary key,
    csrf_token text not null,
    expires_at timestamptz not null,
    created_at timestamptz not null default now()
);

-- Sign-in deletes expired sessions in small batches, oldest expiry first.
create index ui_sessions_expires_idx on ui_sessions (expires_at);
