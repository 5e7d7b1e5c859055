-- Rows that belong to a camera, task or zone go with it, whoever deletes it. Until now the
-- registry deleted them by hand, reaching into tables media, perception and zones own.
--
-- Triggers rather than foreign keys: the children are written by their owners from in-memory
-- views that may lag the registry by a moment (a health update of a camera just removed, the
-- zone engine's occupancy of a zone just deleted). A foreign key would turn that harmless lag
-- into a failed write, and for the zone engine into a consumer retrying for ever; the trigger
-- cleans up at the parent's deletion, and the owners drop leftovers of a later write as before.
CREATE TRIGGER cameras_delete_health AFTER DELETE ON cameras
BEGIN
    DELETE FROM camera_health WHERE camera_id = OLD.id;
END;

CREATE TRIGGER tasks_delete_lease AFTER DELETE ON tasks
BEGIN
    DELETE FROM leases WHERE task_id = OLD.id;
END;

CREATE TRIGGER zones_delete_occupancy AFTER DELETE ON zones
BEGIN
    DELETE FROM zone_occupancy WHERE zone_id = OLD.id;
END;
