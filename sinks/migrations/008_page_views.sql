-- Page views (schema content_view v2, web_visit v3): the browser tracker reports an element's dwell each
-- time the page is hidden, so one view of an item can send several content_view rows; they share
-- page_view_id with each other and with the page's web_visit. The content report counts views and mean
-- dwell per page view (sinks/reports/identity.py: the page_view_id, else the event id); rows without it
-- (SDK, older trackers, history stored before this migration) count one view each, as before.
ALTER TABLE leadpulse.events ADD COLUMN IF NOT EXISTS page_view_id Nullable(String) AFTER channel;
