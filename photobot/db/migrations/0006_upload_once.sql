-- An operator's upload of the same file into the same event (a retried bulk upload) is one
-- photo, as the hot folder already guarantees for its own files.
create unique index photos_upload_once on photos (event_id, sha256) where source = 'upload';
