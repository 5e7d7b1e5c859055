-- 0013: an audit row names what the change did to which object (`camera gate added`,
-- `zone door changed: points`, `token tok_4 revoked`), not only the route it came by. Fields
-- that changed are named, never their values. NULL on rows written before, and on refusals.
ALTER TABLE audit ADD COLUMN what TEXT;
