"""The audit log (Directive 2016/680 art. 25): records, hash chain and signatures, verification, queries."""
