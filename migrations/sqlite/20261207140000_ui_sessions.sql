-- Dashboard (/ui) sessions, as in PostgreSQL (see the migration of the same name there): only a
-- SHA-256 hash of the session token is stored, with the session's CSRF token and its expiry
-- (microseconds since the Unix epoch, like every time of this engine).
create table ui_sessions (
    token_hash blob primary key,
    csrf_token text not null,
    expires_at integer not null,
    created_at integer not null
);

-- Sign-in deletes expired sessions in small batches, oldest expiry first.
create index ui_sessions_expires_idx on ui_sessions (expires_at);
