-- The credential's DPoP private key (RFC 9449): base64url of a P-256
-- PKCS#8 document, sealed like the token columns (column name `dpop_key`
-- as associated data). NULL for a provider that does not use DPoP.
ALTER TABLE credentials ADD COLUMN dpop_key TEXT;
