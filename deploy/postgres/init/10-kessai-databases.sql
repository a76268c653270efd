-- One database per kessai service: no table is shared between services.
--
-- The official postgres image runs this once, when its data volume is first
-- initialised, as the superuser named by POSTGRES_USER. kessai also creates a missing
-- database itself at start (store.postgres_url + store.database_prefix), so this only
-- makes the layout visible up front and lets a less privileged role be used later.
-- Names are <store.database_prefix>_<service>, with '-' written as '_'.
CREATE DATABASE kessai_coordinator;
CREATE DATABASE kessai_balance;
CREATE DATABASE kessai_card_issuer;
CREATE DATABASE kessai_bank;
