-- The id of the marker message the workers last stored on the broker (`<prefix>.epoch`). A
-- broker found without a marker while this is set lost its data (or the queue was deleted):
-- every queued, published task is published again. Null until the first marker, so a first
-- start republishes nothing.
alter table control add column broker_epoch uuid;
