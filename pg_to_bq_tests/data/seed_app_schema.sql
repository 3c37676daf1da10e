-- A schema shaped like the application of the article this project grew from (a posting
-- site on Supabase: posts, comments, votes, tags, SNS cross-posting, LLM usage). Written for
-- the tests; realistic names and types, including integer columns named after LLM tokens
-- (counts, not secrets) and text columns that do hold secrets.
CREATE TABLE dim_users (
    user_uuid uuid PRIMARY KEY,
    user_name text NOT NULL,
    email text,
    password_hash text,
    access_token text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE dim_posts (
    post_id integer PRIMARY KEY,
    post_title text NOT NULL,
    post_content text,
    post_author_ip_hash text,
    good_vote bigint NOT NULL DEFAULT 0,
    bad_vote bigint NOT NULL DEFAULT 0,
    comment_count integer NOT NULL DEFAULT 0,
    is_welcomed boolean,
    post_date_gmt timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE dim_comments (
    comment_id integer PRIMARY KEY,
    post_id integer REFERENCES dim_posts,
    comment_author text,
    comment_content text,
    comment_parent integer,
    comment_date_gmt timestamptz NOT NULL
);
CREATE TABLE dim_tags (tag_id integer PRIMARY KEY, tag_name text UNIQUE NOT NULL);
CREATE TABLE rel_post_tags (
    post_id integer REFERENCES dim_posts,
    tag_id integer REFERENCES dim_tags,
    PRIMARY KEY (post_id, tag_id)
);
CREATE TABLE fct_post_vote_history (
    post_vote_id bigint PRIMARY KEY,
    post_id integer REFERENCES dim_posts,
    voter_ip_hash text,
    vote_type smallint NOT NULL,
    vote_date_jst date NOT NULL
);
CREATE TABLE fct_comment_vote_history (
    comment_vote_id bigint PRIMARY KEY,
    comment_id integer REFERENCES dim_comments,
    vote_type smallint NOT NULL,
    voted_at timestamptz NOT NULL
);
CREATE TABLE fct_post_edit_history (
    post_edit_id bigint PRIMARY KEY,
    post_id integer REFERENCES dim_posts,
    post_revision_number integer NOT NULL,
    post_title_before_edit text,
    post_content_before_edit text,
    edited_at timestamptz NOT NULL
);
CREATE TABLE dim_stop_words (stop_word text PRIMARY KEY);
CREATE TABLE now_editing_pages (
    post_id integer PRIMARY KEY,
    user_ip_hash text,
    last_heart_beat_at_utc timestamp NOT NULL
);
CREATE TABLE social_posts (
    social_post_id bigint PRIMARY KEY,
    post_id integer REFERENCES dim_posts,
    platform text NOT NULL,
    sns_post_id text,
    misskey_token text,
    posted_at timestamptz
);
CREATE TABLE llm_usage (
    usage_id bigint PRIMARY KEY,
    post_id integer,
    model text NOT NULL,
    token_count integer NOT NULL,
    used_token bigint NOT NULL,
    total_token bigint,
    api_key_name text,
    openai_api_key text,
    cost_usd numeric(12,6),
    requested_at timestamptz NOT NULL
);

INSERT INTO dim_users SELECT gen_random_uuid(), 'user' || g, 'u' || g || '@example.com',
    'pbkdf2$' || md5(g::text), 'tok-' || md5(g::text), now() FROM generate_series(1, 20) g;
INSERT INTO dim_posts SELECT g, 'タイトル' || g, '本文' || g, md5(g::text), g * 3, g, g % 7,
    g % 2 = 0, now() - g * interval '1 hour', now() - g * interval '1 minute'
    FROM generate_series(1, 500) g;
INSERT INTO dim_comments SELECT g, 1 + g % 500, 'author' || g, 'comment ' || g,
    CASE WHEN g % 5 = 0 THEN g - 1 END, now() - g * interval '1 minute'
    FROM generate_series(1, 1500) g;
INSERT INTO dim_tags SELECT g, 'tag' || g FROM generate_series(1, 40) g;
INSERT INTO rel_post_tags SELECT 1 + g % 500, 1 + g % 40 FROM generate_series(1, 400) g;
INSERT INTO fct_post_vote_history SELECT g, 1 + g % 500, md5(g::text), (g % 2)::smallint,
    current_date - g % 30 FROM generate_series(1, 3000) g;
INSERT INTO fct_comment_vote_history SELECT g, 1 + g % 1500, (g % 2)::smallint,
    now() - g * interval '10 seconds' FROM generate_series(1, 2000) g;
INSERT INTO fct_post_edit_history SELECT g, 1 + g % 500, g % 4, 'before ' || g, 'old ' || g,
    now() - g * interval '1 hour' FROM generate_series(1, 800) g;
INSERT INTO dim_stop_words SELECT 'word' || g FROM generate_series(1, 60) g;
INSERT INTO now_editing_pages SELECT g, md5(g::text), now()::timestamp FROM generate_series(1, 5) g;
INSERT INTO social_posts SELECT g, 1 + g % 500, 'misskey', 'note' || g, 'mk-' || md5(g::text),
    now() FROM generate_series(1, 120) g;
INSERT INTO llm_usage SELECT g, 1 + g % 500, 'gpt-4o-mini', 100 + g, 90 + g, 190 + 2 * g,
    'batch-embedding', 'sk-' || md5(g::text), g * 0.000123, now() - g * interval '1 minute'
    FROM generate_series(1, 300) g;
