-- Sample rows, written as the app writes them (run as postgres): sign-ups through
-- auth.users (the trigger creates the sales rows), a bucket and attachments, CRM rows,
-- and the CLI's record of the app's applied migrations.
INSERT INTO auth.users (id, aud, role, email, encrypted_password, email_confirmed_at,
                        raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'authenticated',
       'authenticated', 'user' || i || '@example.com', '$2a$10$abcdefghijklmnopqrstuv' || i,
       now(), '{"provider": "email"}', jsonb_build_object('first_name', 'First' || i,
       'last_name', 'Last' || i), now(), now()
FROM generate_series(1, 5) i;
INSERT INTO auth.identities (provider_id, user_id, identity_data, provider, created_at)
SELECT id::text, id, jsonb_build_object('sub', id::text, 'email', email), 'email', now()
FROM auth.users;
INSERT INTO auth.refresh_tokens (token, user_id, revoked, created_at)
SELECT 'token-' || i, '00000000-0000-4000-8000-000000000001', false, now()
FROM generate_series(1, 3) i;

INSERT INTO storage.buckets (id, name, public) VALUES ('attachments', 'attachments', true);
INSERT INTO storage.objects (bucket_id, name, owner, metadata)
SELECT 'attachments', 'notes/' || i || '/file.pdf', '00000000-0000-4000-8000-000000000001',
       jsonb_build_object('size', i * 1000, 'mimetype', 'application/pdf')
FROM generate_series(1, 4) i;

INSERT INTO public.companies (name, sector, sales_id)
SELECT 'Company ' || i, 'Sector ' || (i % 3), (SELECT min(id) FROM public.sales)
FROM generate_series(1, 20) i;
INSERT INTO public.contacts (first_name, last_name, email_jsonb, company_id, sales_id, tags)
SELECT 'Contact', 'N' || i, jsonb_build_array(jsonb_build_object('email', 'c' || i || '@x.org')),
       1 + i % 20, (SELECT min(id) FROM public.sales), ARRAY[i % 4]
FROM generate_series(1, 60) i;
INSERT INTO public.deals (name, company_id, stage, amount, sales_id)
SELECT 'Deal ' || i, 1 + i % 20, (ARRAY['opportunity', 'proposal', 'won', 'lost'])[1 + i % 4]::public.deal_stage,
       i * 1000, (SELECT min(id) FROM public.sales)
FROM generate_series(1, 15) i;
INSERT INTO public."contactNotes" (contact_id, text, attachments)
SELECT 1 + i % 60, 'Note ' || i, ARRAY[jsonb_build_object('path', 'notes/' || i || '/file.pdf')]
FROM generate_series(1, 4) i;
INSERT INTO public.tasks (contact_id, text, due_date)
SELECT 1 + i % 60, 'Call back ' || i, now() + i * interval '1 day' FROM generate_series(1, 10) i;

INSERT INTO supabase_migrations.schema_migrations (version, name, statements) VALUES
    ('20240730075029', 'init_db', ARRAY['create table sales ...']),
    ('20240730075425', 'init_triggers', ARRAY['create trigger on_auth_user_created ...']);
